"""Stand-ins for real upstreams: a simulated OpenAI-compatible backend and a local llama.cpp model."""
