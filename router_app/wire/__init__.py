"""What the edge (`web`) and the data plane (`proxy`, `fleet`) both send to clients: OpenAI- and Anthropic-shaped
error bodies (`errors`), server-sent-event frames (`sse`) and responses that notice a client leaving
(`disconnect`)."""
