"""The protocol's vocabulary: the record names a BCS-FL ServerApp and its nodes exchange (BCS-FL, Sec. IV).

Both sides of the client/committee border import these names instead of spelling the
strings themselves; this module imports nothing. Flower's own names (the ``"arrays"``
and ``"config"`` records, ``"server-round"``, ``"num-examples"``) stay Flower's.

A train reply (Sec. IV-A, the model package):

* :data:`PACKAGE_KEY`: the ConfigRecord with the signed package header
  (:class:`bcsfl_flower.package.ModelPackage`).
* :data:`REFUSED`, :data:`NOT_ENROLLED`: error codes of a node that will not train.

The coordinator role on client nodes (``committee="nodes"``, Sec. IV-B/C): a TRAIN
message whose ``config`` record holds :data:`ROLE_KEY` asks for the role, not training.

* :data:`ROLE_KEY`: :data:`ROLE_COORDINATE` (compute, sign and return the round
  statement) or :data:`ROLE_CANDIDATE` (send the candidate of the statement named by
  :data:`STATEMENT_KEY`).
* :data:`CHAIN_ROUND_KEY`: the round the statement certifies (the relay's count).
* :data:`RETURN_CANDIDATE_KEY`: also return the candidate's tensors.
* :data:`VOTE_KEY`: the ConfigRecord of a member's answer (its signature over the
  statement and its copy of the round record, or an ``error``).
* :data:`CANDIDATE_KEY`: the ArrayRecord of the candidate model (in an answer, and in
  the node's state between the two roles).

In a node's own state:

* :data:`ACCEPTED_KEY`: ``seq`` and ``hash`` of the ledger head whose certified model
  the node accepted last (the acceptance check).
"""

from __future__ import annotations

__all__ = [
    "ACCEPTED_KEY", "CANDIDATE_KEY", "CHAIN_ROUND_KEY", "NOT_ENROLLED", "PACKAGE_KEY", "REFUSED",
    "RETURN_CANDIDATE_KEY", "ROLE_CANDIDATE", "ROLE_COORDINATE", "ROLE_KEY", "STATEMENT_KEY", "VOTE_KEY",
]

#: Key of the ConfigRecord that carries the package header in a train reply.
PACKAGE_KEY = "bcsfl.package"
#: Error code of a reply that refuses an uncertified global model.
REFUSED = 4201
#: Error code of a reply from a node that is not enrolled (and could not enrol itself).
NOT_ENROLLED = 4202

#: Config entry that makes a TRAIN message a coordinator-role message.
ROLE_KEY = "bcsfl.role"
#: Role: verify the packages, coordinate, sign the round statement.
ROLE_COORDINATE = "coordinate"
#: Role: send the candidate of the statement this node signed.
ROLE_CANDIDATE = "candidate"
#: Config entry: the chain round the statement certifies.
CHAIN_ROUND_KEY = "bcsfl.round"
#: Config entry: return the candidate's tensors with the vote.
RETURN_CANDIDATE_KEY = "bcsfl.return-candidate"
#: Config entry of a ``candidate`` request: the digest of the statement whose candidate is asked for.
STATEMENT_KEY = "bcsfl.statement"
#: ConfigRecord of a member's answer to a role message.
VOTE_KEY = "bcsfl.vote"
#: ArrayRecord of a candidate model.
CANDIDATE_KEY = "bcsfl.candidate"

#: ConfigRecord in a node's state: ``seq`` and ``hash`` of the head it accepted last.
ACCEPTED_KEY = "bcsfl.accepted-head"
