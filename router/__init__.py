"""fedrouter: an OpenAI-compatible gateway that routes across federated LLM backends."""
