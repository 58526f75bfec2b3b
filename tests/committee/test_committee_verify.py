"""Each kind of bad package is rejected with its own reason."""

import time

import numpy as np
import pytest

from bcsfl_flower.committee.verify import PackageVerifier, Rejection, VerifiedUpdate
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.package import PACKAGE_KEY

from message_kit import global_model, signed_content

KEY = SigningKey.from_seed(b"alice")


def make_verifier():
    registry = {"alice": KEY.public_hex}
    return PackageVerifier(registry=registry.get, max_age=60.0)


def check(verifier, content, server_round=1, reference=None):
    return verifier.verify(content, server_round=server_round, reference=reference or global_model(),
                           now=time.time())


def test_good_package_passes_once_and_replay_is_rejected():
    v = make_verifier()
    content = signed_content(KEY, global_model(1), client_id="alice", server_round=1)
    assert isinstance(check(v, content), VerifiedUpdate)
    again = check(v, content)
    assert isinstance(again, Rejection) and again.reason == "replayed packet id"


def _tampered_arrays(content):
    arrays = content["arrays"]
    w = arrays["w"].numpy().copy()
    w[0, 0] += 1.0
    from bcsfl_flower.package import numpy_to_arrays

    content["arrays"] = numpy_to_arrays({"w": w, "b": arrays["b"].numpy()})
    return content


CASES = {
    "unsigned": (lambda: _strip(signed_content(KEY, global_model(1), client_id="alice", server_round=1)), "unsigned"),
    "forged": (lambda: signed_content(SigningKey.from_seed(b"mallory"), global_model(1), client_id="alice", server_round=1),
               "public key differs"),
    "unregistered": (lambda: signed_content(SigningKey.from_seed(b"eve"), global_model(1), client_id="eve", server_round=1),
                     "unregistered client"),
    "stale": (lambda: signed_content(KEY, global_model(1), client_id="alice", server_round=1, timestamp=time.time() - 3600),
              "stale timestamp"),
    "future": (lambda: signed_content(KEY, global_model(1), client_id="alice", server_round=1, timestamp=time.time() + 3600),
               "timestamp in the future"),
    "wrong round": (lambda: signed_content(KEY, global_model(1), client_id="alice", server_round=2), "package for round 2"),
    "nan": (lambda: signed_content(KEY, {**global_model(1), "b": np.full(4, np.nan, np.float32)}, client_id="alice",
                                   server_round=1), "non-finite"),
    "inf": (lambda: signed_content(KEY, {**global_model(1), "b": np.full(4, np.inf, np.float32)}, client_id="alice",
                                   server_round=1), "non-finite"),
    "wrong shape": (lambda: signed_content(KEY, {"w": np.zeros((4, 6), np.float32), "b": np.zeros(4, np.float32)},
                                           client_id="alice", server_round=1), "wrong shape for w"),
    "missing tensor": (lambda: signed_content(KEY, {"w": np.zeros((6, 4), np.float32)}, client_id="alice",
                                              server_round=1), "wrong tensors"),
    "params changed after signing": (
        lambda: _tampered_arrays(signed_content(KEY, global_model(1), client_id="alice", server_round=1)),
        "hash does not match"),
    "metrics changed after signing": (lambda: _bump_examples(
        signed_content(KEY, global_model(1), client_id="alice", server_round=1)), "metrics do not match"),
    "malformed header": (lambda: _break_header(
        signed_content(KEY, global_model(1), client_id="alice", server_round=1)), "malformed package"),
}


def _strip(content):
    del content[PACKAGE_KEY]
    return content


def _bump_examples(content):
    content["metrics"]["num-examples"] = 10_000
    return content


def _break_header(content):
    content[PACKAGE_KEY]["timestamp"] = "yesterday"
    return content


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_package_rejected_with_reason(case):
    build, reason = CASES[case]
    out = check(make_verifier(), build())
    assert isinstance(out, Rejection), case
    assert reason in out.reason, (case, out.reason)
