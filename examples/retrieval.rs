//! Semantic search with an embedding model: embed a few passages and some
//! queries with nomic-embed-text-v1.5 (its task prefixes "search_document: "
//! and "search_query: "), rank the passages by cosine similarity.
//!
//!   cargo run --release --example retrieval [MODEL.gguf]
//!
//! Default model: models/nomic-embed-text-v1.5.f16.gguf (`make models`).

use std::time::Instant;

use rocmforge::model::{LoadOptions, Model};

const PASSAGES: [&str; 8] = [
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to produce glucose and oxygen.",
    "Mount Everest, in the Himalayas, rises 8,849 metres above sea level, the highest point on Earth.",
    "Rust's ownership and borrowing rules let the compiler reject programs with data races before they run.",
    "The Second World War ended in 1945, with Germany's surrender in May and Japan's in September.",
    "The heart's muscular chambers contract rhythmically, pushing blood through the arteries to the body and lungs.",
    "The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
    "The Python language uses indentation to delimit blocks of code.",
];

const QUERIES: [(&str, usize); 5] = [
    ("How do plants make food from sunlight?", 0),
    ("What is the tallest mountain on Earth?", 1),
    ("Which programming language prevents data races at compile time?", 2),
    ("When did the Second World War end?", 3),
    ("How does the heart pump blood?", 4),
];

fn main() -> rocmforge::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/nomic-embed-text-v1.5.f16.gguf".into());
    let model = Model::load(&path, LoadOptions::default())?;
    let embed = |text: &str| -> rocmforge::Result<Vec<f32>> {
        let ids = model.tokenizer.encode(text, true, false);
        // the model's pooling (mean for nomic), L2-normalised: a dot
        // product is then the cosine similarity
        model.embed(&ids, None, true)
    };
    let t = Instant::now();
    let docs: Vec<Vec<f32>> = PASSAGES.iter().map(|p| embed(&format!("search_document: {p}"))).collect::<Result<_, _>>()?;
    println!("embedded {} passages in {:.2?} ({} dims, {} pooling)", docs.len(), t.elapsed(), model.cfg.n_embd, model.default_pooling().name());
    let mut right = 0;
    for (q, want) in QUERIES {
        let e = embed(&format!("search_query: {q}"))?;
        let mut ranked: Vec<(f32, usize)> = docs.iter().enumerate().map(|(i, d)| (e.iter().zip(d).map(|(a, b)| a * b).sum(), i)).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (score, best) = ranked[0];
        right += usize::from(best == want);
        println!("{} {q}\n    -> {score:.3} {}\n       {:.3} {} (second)", if best == want { "ok  " } else { "MISS" }, PASSAGES[best], ranked[1].0, PASSAGES[ranked[1].1]);
    }
    println!("{right}/{} queries rank the right passage first", QUERIES.len());
    if right != QUERIES.len() {
        std::process::exit(1);
    }
    Ok(())
}
