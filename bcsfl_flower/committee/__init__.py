"""The coordinator committee (BCS-FL, Sec. IV-B/C): verify, filter, agree, certify.

In the ServerApp (``committee="server"``): :mod:`.verify` checks packages, :mod:`.filter`
and :mod:`.coordinator` compute the candidate (with the :mod:`.rootset`), :mod:`.committee`
runs the members and their :mod:`.agreement` (:mod:`.pbft_agreement`), :mod:`.outcome`
builds the round record. On client nodes (``committee="nodes"``): :mod:`.relay` is the
ServerApp's side, :mod:`.coordinator_role` a drawn node's, and :mod:`.acceptance` the
check every node makes before it trains. :mod:`.enrolment` admits identities. It imports
nothing of :mod:`bcsfl_flower.client`; the record names both share are
:mod:`bcsfl_flower.protocol`'s.
"""
