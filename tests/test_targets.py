"""The C kernel gives the same bits whatever instructions it is built for.

gcc vectorises the kernel for the machine that builds it (``-march=native``: AVX-512 here, with
512-bit vectors in the low-precision section), and a cluster may share a portable build
(``ADAMKIT_CFLAGS=-march=x86-64-v3``, AVX2; or ``-march=x86-64``, SSE2 only). Each is a
different program: here each one runs every update kind and storage format, and its results are
held equal, bit for bit, to those of the build this suite uses.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from .artifacts import run

#: Steps of every kind of loop: fp32, AMSGrad's third state, bf16 state (one pass, with fp32
#: and with stochastically rounded bf16 parameters), 8-bit state, the two passes of cautious
#: masking and update clipping (their 16-lane sums), schedule-free's body, and tensors long
#: enough to span tiles (1024) and 8-bit blocks (256), with ragged ends.
_DIGEST = """
import hashlib, json, torch, adamkit
from adamkit.kernels import fused_library
assert fused_library() is not None
configs = [
    ("Adam", {}, torch.float32, "fp32"),
    ("AdamW", {"amsgrad": True}, torch.float32, "bf16"),
    ("RAdam", {"weight_decay": 0.1}, torch.float32, "bf16"),
    ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}, torch.float32, "8bit"),
    ("Adamax", {"maximize": True}, torch.float32, "bf16"),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}, torch.float32, "8bit"),
    ("AdamW", {}, torch.bfloat16, "bf16"),
    ("RAdam", {}, torch.float64, "fp32"),
    ("AdamW", {"cautious": True, "update_clipping": True}, torch.float32, "fp32"),
    ("ADOPT", {"cautious": True, "weight_decay": 0.1}, torch.float64, "fp32"),
    ("ScheduleFreeAdamW", {"weight_decay": 0.1}, torch.float32, "fp32"),
]
digests = {}
for name, kwargs, dtype, precision in configs:
    g = torch.Generator().manual_seed(7)
    params = [torch.randn(n, generator=g).to(dtype).requires_grad_() for n in (40000, 1500, 3)]
    stochastic = dtype == torch.bfloat16
    opt = getattr(adamkit, name)(params, lr=1e-2, fused=True, state_precision=precision,
                                 stochastic_rounding=stochastic, **kwargs)
    for _ in range(6):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().view(-1).view(torch.uint8).numpy().tobytes())
        for key, value in sorted(opt.state[p].items()):
            if isinstance(value, torch.Tensor):
                h.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests[f"{name}{kwargs}{dtype}{precision}"] = h.hexdigest()
print(json.dumps(digests))
"""


def _digests(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    result = run([sys.executable, "-c", textwrap.dedent(_DIGEST)], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("gcc") is None,
    reason="the portable targets named here are x86-64 ones, built by gcc",
)
def test_every_target_gives_the_same_bits(tmp_path: Path) -> None:
    native = _digests(tmp_path, {})  # the build this suite uses
    for target in ("-march=x86-64-v3", "-march=x86-64"):  # AVX2; SSE2 only
        env = {"ADAMKIT_CACHE_DIR": str(tmp_path / target), "ADAMKIT_CFLAGS": target}
        assert _digests(tmp_path, env) == native, target
