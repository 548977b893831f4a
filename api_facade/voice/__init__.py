"""Spoken turns: a reply spoken sentence by sentence while the chat still writes it.

``reply`` runs the chat stream and the speech synthesis side by side for ``POST /v1/voice``,
``/v1/chat``'s voice mode and the realtime WebSocket; ``sentences`` decides when enough of the
reply is written to speak; ``language`` picks the voice; ``vad`` and ``realtime`` hold the live
conversation's turn taking. Nothing here knows HTTP: the routers map it onto their transports.
"""
