"""Run PyTorch's own optimizer tests (``test/test_optim.py``) on adamkit's classes.

Registers, in torch's ``optim_db``, a deep copy of torch's ``OptimizerInfo`` for each of Adam,
AdamW, RAdam, NAdam and Adamax with ``optim_cls`` set to adamkit's class and named
``adamkit_<Name>`` (test ids read ``test_complex_adamkit_Adam_cpu_complex64`` beside torch's
``test_complex_Adam_cpu_complex64``, which stays as the control). The other optimizers are
dropped. ``optim_db`` is changed in place before pytest imports ``test_optim.py``, so its
``from ... import optim_db`` sees the copies. ``run.sh`` fetches the test file and runs it.
"""

import copy
import os

os.environ.setdefault("PYTORCH_TESTING_DEVICE_ONLY_FOR", "cpu")

from torch.testing._internal import common_optimizers

import adamkit
from adamkit.optim._algorithms import ALGORITHMS

#: adamkit's algorithms that have a torch.optim twin, whose optim_db entry they join.
FAMILY = [name for name, row in ALGORITHMS.items() if row.torch_twin]


class AdamkitOptimizerInfo(common_optimizers.OptimizerInfo):
    @property
    def name(self) -> str:
        return "adamkit_" + self.optim_cls.__name__


torch_infos = {
    info.optim_cls.__name__: info
    for info in common_optimizers.optim_db
    if info.optim_cls.__name__ in FAMILY
}
assert sorted(torch_infos) == sorted(FAMILY), sorted(torch_infos)
copies = []
for name in FAMILY:
    info = copy.deepcopy(torch_infos[name])
    info.__class__ = AdamkitOptimizerInfo
    info.optim_cls = getattr(adamkit, name)
    copies.append(info)
common_optimizers.optim_db[:] = [torch_infos[n] for n in FAMILY] + copies
