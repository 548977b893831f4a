"""PyTriton host for Milo Voice's models (speech to text, text to speech, translation, chat)."""
