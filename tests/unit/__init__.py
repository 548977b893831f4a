"""Fast tests with no model weights and no model server: the contract, the client's errors, the facade's
route logic on a scripted transport, tokens and rate limits (on a real Redis), text normalisation,
the registry and the generated Triton configs."""
