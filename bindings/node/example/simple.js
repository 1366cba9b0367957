// Load SmolLM2, tokenize a prompt, stream 32 greedy tokens, print the ids
// (the same output as examples/simple.c).
'use strict';
const { load } = require('..');

async function main() {
  const path = process.argv[2] || 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
  const prompt = process.argv[3] || 'The capital of France is';
  const model = await load(path, { contextSize: 512 });
  try {
    process.stdout.write(prompt);
    const r = await model.generate(model.tokenize(prompt), { maxTokens: 32, temperature: 0 }, (_, text) => process.stdout.write(text));
    process.stdout.write('\nids: ' + r.tokens.join(' ') + '\n');
  } finally {
    model.close();
  }
}

main().catch((e) => {
  console.error(`error (${e.code}): ${e.message}`);
  process.exit(1);
});
