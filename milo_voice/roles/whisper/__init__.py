"""Whisper as ``SpeechToText`` (``milo_voice.roles.stt``) runs it: windows, features, the torch encoder
and decoder, the two decoding backends and the making of transcripts."""
