// The same calls as tests/integration/test_node_and_curl.py makes from Python, through
// OPENAI_BASE_URL; prints what the app saw as one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });
const chat = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hello from any language" }],
});
const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  stream: true,
  messages: [{ role: "user", content: "stream from any language" }],
});
let streamed = "";
let streamId = null;
for await (const chunk of stream) {
  streamId = chunk.id;
  streamed += chunk.choices[0]?.delta?.content ?? "";
}
const embedding = await client.embeddings.create({
  model: "text-embedding-3-small",
  input: "vectors from any language",
});
console.log(JSON.stringify({
  chat_id: chat.id,
  chat: chat.choices[0].message.content,
  stream_id: streamId,
  stream: streamed,
  embedding_head: embedding.data[0].embedding.slice(0, 4),
}));
