"""The client layer (BCS-FL, Sec. IV-A, the local device layer).

A node's identity and key (:mod:`.identity`), the signature on its train reply
(:mod:`.signing`), and the attacks malicious clients run in experiments
(:mod:`.attacks`). It imports nothing of the committee or the ledger: the record names
it shares with them are :mod:`bcsfl_flower.protocol`'s, and ``bcsfl_mod``
(:mod:`bcsfl_flower.mod`) composes it with the committee's node role and the ledger.
Training itself is :mod:`bcsfl_flower.training`.
"""
