"""How right what the stack says and hears is: error rates of transcripts against references."""
