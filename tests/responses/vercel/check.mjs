// The Vercel AI SDK's default model path, openai(model), which calls POST /v1/responses: one JSON
// line per call, for tests/responses/test_vercel_ai_sdk.py to check.
import { generateText, streamText, tool, stepCountIs } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { z } from 'zod';

const openai = createOpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
const model = openai(process.env.MODEL);
const say = (kind, value) => console.log(JSON.stringify({ kind, ...value }));

const generated = await generateText({ model, prompt: 'Say hello.' });
say('generate', { text: generated.text, usage: generated.usage, finish: generated.finishReason });

const streamed = streamText({ model, prompt: 'Say hello.' });
let text = '';
for await (const part of streamed.textStream) text += part;
say('stream', { text, usage: await streamed.usage, finish: await streamed.finishReason });

const withTool = await generateText({
  model,
  prompt: 'What is the weather in Paris?',
  tools: {
    get_weather: tool({
      description: 'The weather in a city.',
      inputSchema: z.object({ location: z.string() }),
      execute: async ({ location }) => ({ location, celsius: 21 }),
    }),
  },
  stopWhen: stepCountIs(2), // the call, then a second request that carries its result back
});
say('tool', { steps: withTool.steps.map((s) => ({ calls: s.toolCalls, results: s.toolResults, finish: s.finishReason })) });
