"""Multi-process training (DistributedDataParallel over gloo, 2 CPU processes): the sharded
epoch equals one process on the same data order, ranks stay in sync, only rank 0 writes, and
a DDP run resumes from its checkpoint."""

import datetime
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from toys import TinyNet

from qdgs_lib.data.identities import TensorFaces
from qdgs_lib.models.heads import AdaFace, CosFace
from qdgs_lib.models.iresnet import build_iresnet
from qdgs_lib.train import RecognitionTrainer


def data(n, size):
    g = torch.Generator().manual_seed(0)
    return TensorFaces(torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 4)


def tiny_trainer(out, batch):
    torch.manual_seed(0)
    return RecognitionTrainer(TinyNet(), CosFace(16, 4), data(24, 8), out, lr=0.1,
                              milestones=(9,), batch_size=batch, augment=False, progress=False)


def ir_trainer(out):
    torch.manual_seed(0)  # 19 samples: unequal shares unless trimmed (else rank 1 would hang)
    return RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), data(19, 64), out,
                              lr=0.05, milestones=(9,), batch_size=5, progress=False)


def _worker(rank, world, tmp, kind, out, epochs, attempt):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store_{out}_{epochs}_{attempt}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    torch.set_num_threads(1)
    try:
        tr = tiny_trainer(Path(tmp) / out, 4) if kind == "tiny" else ir_trainer(Path(tmp) / out)
        tr.run(epochs)
        torch.save(tr.backbone.state_dict(), Path(tmp) / f"{out}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def launch(tmp, kind, out, epochs):
    for attempt in range(2):
        try:
            mp.spawn(_worker, args=(2, str(tmp), kind, out, epochs, attempt), nprocs=2,
                     join=True)
            break
        except mp.ProcessExitedException as e:
            # Once in a CI run (torch 2.14, gloo, CPU) a rank died by SIGABRT ("terminate
            # called without an active exception") while its peer was still alive; 25 runs
            # in a row did not repeat it. A process killed by a signal is relaunched once:
            # the trainer resumes from its last checkpoint, exactly (tested below), as after
            # any crash, and every assertion still applies. A second death fails the test.
            if attempt or e.exit_code >= 0:
                raise
            warnings.warn(f"DDP rank {e.error_index} died by {e.signal_name} ({e.msg}); "
                          "relaunched (resumes from its checkpoint)", stacklevel=2)
    return [torch.load(tmp / f"{out}_rank{r}.pt", weights_only=True) for r in (0, 1)]


def close(a, b, rel):
    """Every entry within ``rel`` of its tensor's largest magnitude (0: bitwise). Float
    rounding differs in the last bits wherever sums run in another order (gloo's all-reduce
    against one process's batch; torch 2.6 and 2.14 order them differently), so the bound
    scales with the values, not with each entry: an entry near 0 carries its neighbours'
    rounding."""
    return all(torch.allclose(a[k].float(), b[k].float(), rtol=0,
                              atol=rel * b[k].float().abs().max().clamp(min=1).item())
               for k in a)


def test_two_processes_equal_one_process_on_the_same_data_order(tmp_path):
    single = tiny_trainer(tmp_path / "single", 8)  # batch 8 = 2 ranks x 4, same samples
    single.run(2)
    r0, r1 = launch(tmp_path, "tiny", "ddp", 2)
    assert close(r0, r1, 0)  # DDP keeps the ranks identical
    assert close(single.backbone.state_dict(), r0, 1e-6)
    logs = pd.read_csv(tmp_path / "ddp" / "log.csv")
    assert list(logs.epoch) == [1, 2]  # written once, by rank 0
    assert (logs.loss - pd.read_csv(tmp_path / "single" / "log.csv").loss).abs().max() < 1e-5


def test_ddp_checkpoint_resume_and_rank0_writes(tmp_path):
    full = launch(tmp_path, "ir", "full", 2)
    launch(tmp_path, "ir", "part", 1)  # "killed" after epoch 1
    resumed = launch(tmp_path, "ir", "part", 2)
    assert close(full[0], resumed[0], 1e-5)
    # parameters stay identical across ranks; BN running statistics are per rank (DDP
    # broadcasts rank 0's at each forward), and rank 0's are the ones saved
    params = {k for k, _ in build_iresnet("ir_small").named_parameters()}
    assert all(torch.equal(resumed[0][k], resumed[1][k]) for k in params)
    assert list(pd.read_csv(tmp_path / "part" / "log.csv").epoch) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "part").iterdir()  # (a relaunch may leave a
                  if not p.name.startswith(".")) == [  # killed write's hidden temp file)
        "checkpoint.prev.pt", "checkpoint.pt", "log.csv"]
