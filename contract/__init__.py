"""The contract between Milo Voice's clients and its model servers, and nothing else.

Per served model: its tensors (``tensors``), its request and result records (``records``)
and the one packing code both ends use (``codec``). No torch, no server and no client
library: the roles, both servers' handlers, the client and the facade all import it.
"""
