// Smoke test: one streaming chat completion through the official `openai` npm client.
// Starts nothing: point ROCMFORGE_URL at a running rocmforge-server (e.g. http://127.0.0.1:8080).
// Optional: ROCMFORGE_API_KEY (if the server has --api-key), ROCMFORGE_MODEL_NAME.
// Exit 0 on success, 1 on a failed check, 2 on a usage error.
import OpenAI from "openai";

const base = process.env.ROCMFORGE_URL;
if (!base) {
  console.error("smoke: set ROCMFORGE_URL (e.g. http://127.0.0.1:8080)");
  process.exit(2);
}
const client = new OpenAI({
  baseURL: base.replace(/\/+$/, "") + "/v1",
  apiKey: process.env.ROCMFORGE_API_KEY || "unused",
  maxRetries: 0,
  timeout: 60_000,
});

async function main() {
  const stream = await client.chat.completions.create({
    model: process.env.ROCMFORGE_MODEL_NAME || "default",
    messages: [{ role: "user", content: "Say hello in one short sentence." }],
    max_tokens: 24,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices ?? []) {
      text += choice.delta?.content ?? "";
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  console.log(`smoke: ${chunks} chunks, finish_reason=${finish}, usage=${JSON.stringify(usage)}`);
  console.log(`smoke: text=${JSON.stringify(text)}`);
  const errors = [];
  if (text.length === 0) errors.push("no text arrived");
  if (!finish) errors.push("no finish_reason seen");
  if (errors.length) {
    console.error("smoke: FAIL: " + errors.join("; "));
    process.exit(1);
  }
  console.log("smoke: OK");
}

main().catch((err) => {
  console.error("smoke: FAIL:", err?.message ?? err);
  process.exit(1);
});
