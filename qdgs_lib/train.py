"""Training loops (device-agnostic)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .augment import AUGMENT_STYLES, face_augment
from .utils import compile_available, unit_range


def train_classifier(model: nn.Module, dataset: Dataset, epochs: int, lr: float = 1e-3,
                     batch_size: int = 64, seed: int = 0, device: str | torch.device = "auto",
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = True, desc: str = "train",
                     drop_last: bool | None = None) -> list[float]:
    """Adam + cross-entropy for ``epochs``; returns the mean loss of each epoch.
    ``drop_last``: drop the last, smaller batch of each epoch (None: wherever the dataset
    holds more than one batch)."""
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    from .utils import resolve_device

    device = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g,
                        drop_last=len(dataset) > batch_size if drop_last is None else drop_last)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        if not math.isfinite(total):
            raise FloatingPointError(f"{desc}: the loss of epoch {len(losses)} is not finite "
                                     "(NaN/inf inputs, or a learning rate too high)")
        losses.append(total / count)
    return losses


# --- face recognition -------------------------------------------------------------------------

def adaface_input(x: torch.Tensor) -> torch.Tensor:
    """AdaFace models take BGR input normalized as (x - 0.5) / 0.5."""
    return (x.flip(1) - 0.5) / 0.5


def sgd_no_bn_decay(modules: list[nn.Module], lr: float, weight_decay: float = 5e-4,
                    momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with weight decay on everything but batch-norm parameters."""
    decay, no_decay = [], []
    for m in modules:
        for mod in m.modules():
            params = list(mod.parameters(recurse=False))
            (no_decay if isinstance(mod, nn.modules.batchnorm._BatchNorm) else decay).extend(
                params)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                           momentum=momentum)


class BackboneAndHead(nn.Module):
    """Backbone + margin head as one module: (images, labels) -> (embeddings, logits); what
    DistributedDataParallel wraps, so both are synchronized. ``compile``: the backbone's
    forward through ``torch.compile`` (the head's class count changes between datasets, the
    backbone's shapes do not, so one compiled graph serves every stage of a protocol)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, compile: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        # a plain function, not a submodule: the state dicts stay the backbone's own;
        # fallback_random: dropout draws the eager masks, so compiled = eager up to rounding
        # (torch >= 2.14; 2.11 draws a channels_last tensor's mask in logical order, eager in
        # memory order: another draw, tests/test_recognition.py)
        self._compiled_forward = torch.compile(
            backbone.forward, dynamic=False, options={"fallback_random": True}) if compile \
            else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images x and labels y (B,) -> (unit embeddings, margin logits (B, num_classes)); the head
        gets the embeddings and norms as float32."""
        emb, norms = (self._compiled_forward or self.backbone)(x)
        return emb, self.head(emb.float(), norms.float(), y)


def _compile_failure(e: BaseException) -> bool:
    """An error of torch.compile's backend (inductor's code generation or its C++ compile),
    not of the network: by class name, as the classes move between torch versions."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"BackendCompilerFailed", "InductorError", "CppCompileError"})


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RecognitionTrainer:
    """Backbone + margin head trained with SGD and MultiStepLR; checkpoint every epoch.

    ``run(epochs)`` resumes from ``outdir/checkpoint.pt`` when it exists (weights_only load),
    so a killed run continues at the next epoch with the same data order and augmentations.
    ``precision``: ``auto`` (fp16 autocast with loss scaling on CUDA, fp32 elsewhere),
    ``fp32``, ``fp16`` (loss scaling on CUDA only: elsewhere small gradients may underflow;
    use ``bf16`` there) or ``bf16`` (autocast, no loss scaling needed). Augmentations run on
    the training device, so ``num_workers`` loader processes only decode; ``augment_style``:
    "project" (float, RGB) or "released" (as the paper's pipeline: :mod:`qdgs_lib.augment`).
    ``compile``: the backbone's forward (and so its backward) through ``torch.compile``:
    ir_small at batch 64 on 2 CPU cores 1.2-1.4x faster after a one-time ~1 min compile (reused
    by later trainers in the same process); results differ from eager by float rounding
    (torch 2.14; on torch 2.11 with ``channels_last`` the dropout masks are another draw).
    Multi-GPU: launch with ``torchrun --nproc_per_node=N``; the trainer then wraps backbone
    and margin head in DistributedDataParallel and shards each epoch's permutation by rank.
    ``data_id``: anything naming the data's content (e.g. a digest); a checkpoint resumes only
    with the same one (by default only the numbers of samples and identities must match). A
    list names the same data several ways (the first is recorded; a checkpoint with any of
    them resumes), e.g. a digest whose format changed.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, data: Dataset, outdir,
                 lr: float = 0.01, milestones=(12, 20, 24), batch_size: int = 64, seed: int = 0,
                 device: str | torch.device = "auto", augment: bool = True,
                 augment_style: str = "project", progress: bool = True, num_workers: int = 0,
                 channels_last: bool | None = None, precision: str = "auto",
                 compile: bool = False, data_id: str | list[str] | None = None):
        from pathlib import Path

        from .utils import resolve_device

        if len(data) == 0:
            raise ValueError("cannot train on an empty dataset")
        classes = getattr(data, "num_classes", None)
        if classes is not None and classes < 2:
            raise ValueError(f"the dataset has {classes} identity: a margin loss needs at least "
                             "2 (with one, every sample is trivially right and nothing is "
                             "learned)")
        kernel = getattr(head, "kernel", None)
        if classes is not None and kernel is not None and kernel.shape[1] < classes:
            raise ValueError(f"the head has {kernel.shape[1]} classes but the dataset "
                             f"{classes} identities: build the head with "
                             f"num_classes=data.num_classes")
        self.device = resolve_device(device)
        self.backbone, self.head = backbone.to(self.device), head.to(self.device)
        self.data = data
        self.outdir = Path(outdir)
        self.batch_size, self.seed = batch_size, seed
        if augment_style not in AUGMENT_STYLES:
            raise ValueError(f"augment_style {augment_style!r}: one of {AUGMENT_STYLES} "
                             "(qdgs_lib.augment)")
        self.augment, self.augment_style, self.progress = augment, augment_style, progress
        self.rank, self.world = _rank_and_world()
        aliases = [data_id] if data_id is None or isinstance(data_id, str) else list(data_id)
        data_id, self._data_aliases = aliases[0], set(aliases)
        self.is_main = self.rank == 0  # only rank 0 writes checkpoints and logs
        # what a resumed run must share with the run that wrote the checkpoint (the process
        # count: the effective batch, processes x batch_size, and each rank's shard)
        self.settings = {"lr": float(lr), "milestones": [int(m) for m in milestones],
                         "batch_size": int(batch_size), "seed": int(seed),
                         "augment": bool(augment), "augment_style": augment_style,
                         "samples": len(data),
                         "identities": None if classes is None else int(classes),
                         "processes": self.world, "data_id": data_id}
        self.num_workers = num_workers
        self.opt = sgd_no_bn_decay([self.backbone, self.head], lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, list(milestones), 0.1)
        self.epoch = 0
        # auto: fp16 autocast on CUDA (the paper's mixed precision), fp32 elsewhere; bf16 has
        # fp32's range, so it needs no loss scaling
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.precision, self.amp_dtype = precision, dtypes[precision]
        self.amp = self.amp_dtype is not None
        # channels_last: faster convolutions on GPUs (tensor cores), and not slower on CPUs
        # (2 cores, ir_small at batch 64: +35% in bench/run.py, +4-5% on notebook 03's stages)
        on_gpu = self.device.type == "cuda"
        self.channels_last = True if channels_last is None else channels_last
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and on_gpu)
        self.compiled = compile
        if compile and (why := compile_available(self.device)):
            warnings.warn(f"{why}: training runs eagerly instead (slower, and its numbers "
                          "differ by float rounding from a compiled run's)", stacklevel=2)
            self.compiled = False
        self.model = BackboneAndHead(self.backbone, self.head, compile=self.compiled)
        self._compile_unproven = self.compiled  # (_first_compiled_step)
        if self.world > 1:  # the head too: its class weights must be averaged across ranks
            if len(data) < self.world * batch_size:
                raise ValueError(f"{len(data)} samples cannot give each of {self.world} "
                                 f"processes a batch of {batch_size}")
            self.model = nn.parallel.DistributedDataParallel(self.model)

    @property
    def checkpoint_path(self):
        """``outdir/checkpoint.pt``: written by :meth:`save` after every epoch, resumed from by
        ``run``."""
        return self.outdir / "checkpoint.pt"

    def state_dict(self) -> dict:
        """What a checkpoint holds: the epoch, the backbone, head, optimizer, scheduler and
        loss-scaler states, and the ``settings`` and ``precision`` that a resume checks."""
        return {"epoch": self.epoch, "backbone": self.backbone.state_dict(),
                "head": self.head.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "settings": self.settings, "precision": self.precision}

    def save(self) -> None:
        """Write :meth:`state_dict` to :attr:`checkpoint_path` atomically, the previous checkpoint
        kept beside it; only the main rank writes."""
        from .utils import write_checkpoint

        if not self.is_main:
            return
        state = self.state_dict()
        write_checkpoint(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def _read(self, path) -> dict:
        from .utils import BadFileError, reading

        with reading(path, "a qdgs training checkpoint (torch.save, weights only)",
                     "See the message above for what to delete."):
            # on the CPU first: a busy GPU's out-of-memory is not a corrupt file
            st = torch.load(path, map_location="cpu", weights_only=True)
        keys = {"epoch", "backbone", "head", "opt", "sched", "scaler"}
        if not isinstance(st, dict) or not keys <= set(st):
            raise BadFileError(f"{path} is not a qdgs training checkpoint")
        return st

    def load(self) -> bool:
        """Resume from the latest readable checkpoint (falling back to the previous one);
        False when there is none."""
        from .utils import load_checkpoint_with_fallback, reading

        # several processes read the same files: none of them renames one under the others
        st = load_checkpoint_with_fallback(self.checkpoint_path, self._read, "training",
                                           rename=self.world == 1)
        if st is None:
            return False
        theirs = st.get("settings")  # (checkpoints before 2026-11-26 have none)
        if theirs is not None:  # (before 2026-11-27 no process count: single-process runs;
            # before 2026-11-28 no data id: unknown, so not held against this one's; before
            # 2026-11-29 no augmentation style: the project's)
            theirs = {"processes": 1, "data_id": self.settings["data_id"],
                      "augment_style": "project", **theirs}
            if theirs["data_id"] in self._data_aliases:
                theirs["data_id"] = self.settings["data_id"]
        if theirs is not None and theirs != self.settings:
            differ = {k: (theirs.get(k), v) for k, v in self.settings.items()
                      if theirs.get(k) != v}
            raise ValueError(f"{self.checkpoint_path} belongs to a training run with other "
                             f"settings or data (checkpoint vs now: {differ}). Use a new "
                             f"folder, or delete {self.outdir}/checkpoint*.pt and log.csv to "
                             "start over.")
        with reading(self.checkpoint_path, "a checkpoint of this network and head",
                     f"It belongs to another model: use a new folder or delete "
                     f"{self.outdir}/checkpoint*.pt to start over."):
            self._load_state(st)
        # a run may move between devices (precision "auto": fp32 on a CPU, fp16 on CUDA), so
        # another precision is allowed, but said: the rest trains with other rounding
        was = st.get("precision")  # (checkpoints before 2026-11-28 have none)
        if was is not None and was != self.precision:
            warnings.warn(f"{self.checkpoint_path} was trained in {was} up to epoch "
                          f"{self.epoch}; it resumes in {self.precision}, so the run differs "
                          "from an uninterrupted one by more than float rounding (pass "
                          f"precision={was!r} to keep it)", stacklevel=2)
        return True

    def _load_state(self, st: dict) -> None:
        self.backbone.load_state_dict(st["backbone"])
        self.head.load_state_dict(st["head"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        if st["scaler"]:  # empty when written without fp16 loss scaling (CPU, fp32, bf16):
            self.scaler.load_state_dict(st["scaler"])  # an fp16 resume then starts its scale
        self.epoch = st["epoch"]

    def _epoch_order(self) -> tuple[torch.Tensor, torch.Generator]:
        """The epoch's sample order (the same on every rank, which takes its share) and the
        generator of this rank's augmentation draws."""
        base = self.seed * 100_003 + self.epoch
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(base))
        if self.world > 1:  # equal shares (a rank with an extra batch would hang the others)
            order = order[: len(order) // self.world * self.world][self.rank::self.world]
        # augmentations and dropout: the same per epoch on resume, other draws on each rank
        # (one seed for all would give sample i of every rank's batch the same crop and mask)
        rank_seed = base + 1_000_003 * (self.rank + 1)
        torch.manual_seed(rank_seed)
        return order, torch.Generator().manual_seed(rank_seed)

    def _loader(self, batches: list[list[int]]) -> DataLoader:
        """Batches in the epoch's order; files are decoded in ``num_workers`` processes."""
        # its own generator: an iterator otherwise draws its worker seed from the global RNG,
        # which would shift the dropout masks seeded in _epoch_order
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        from .data.identities import collate_faces

        return DataLoader(self.data, batch_sampler=batches, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", generator=g,
                          collate_fn=collate_faces)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loaded batch on the device, augmented, in the network's input format."""
        # to the device first: uint8 crosses the bus at a quarter of float32's bytes, and the
        # augmentations run there
        x = x.to(self.device, non_blocking=True)
        y = y.long().to(self.device, non_blocking=True)
        x = unit_range(x)
        if self.augment:
            x = face_augment(x, g, style=self.augment_style)
        x = adaface_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor):
        """One step's forward and backward (gradients in the parameters, not yet applied)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            emb, logits = self.model(x, y)
            loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return emb, logits, loss

    def _first_compiled_step(self, x: torch.Tensor, y: torch.Tensor):
        """The first step through the compiled model, where torch.compile builds the forward
        and, at the backward, the backward graph. Where that compile fails (torch 2.7's
        inductor writes C++ that g++ refuses for IR-ResNets on AVX-512 CPUs), the step's
        state is restored (buffers: batch-norm and AdaFace statistics; the RNG: dropout) and
        it runs again eagerly, with a warning; later steps run eagerly too."""
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        try:
            out = self._forward_backward(x, y)
        except Exception as e:  # noqa: BLE001 - only a failed compile is caught below
            if not _compile_failure(e):
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200]}); training runs eagerly "
                          "(its numbers differ by float rounding from a compiled run's)",
                          stacklevel=3)
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            getattr(self.model, "module", self.model)._compiled_forward = None
            self.compiled = False
            out = self._forward_backward(x, y)
        self._compile_unproven = False
        return out

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch, then step the learning-rate schedule. Each rank takes its share of the
        epoch's seeded order in full batches (the last partial batch is dropped, unless the data is
        smaller than one batch). Returns the log row: ``epoch`` (counted after it), the mean
        ``loss`` and ``train_acc`` (of the plain cosine classifier, no margin, where the head has
        one) over all ranks' samples, and the ``lr`` it trained at. Does not checkpoint: ``run``
        does."""
        self.model.train()
        order, g = self._epoch_order()
        steps = range(0, len(order) - self.batch_size + 1, self.batch_size) \
            if len(order) >= self.batch_size else [0]
        batches = [order[s:s + self.batch_size].tolist() for s in steps]
        # loss and accuracy are summed on the device (float64, like Python floats; MPS has
        # no float64): no device->host sync per step
        acc = torch.float32 if self.device.type == "mps" else torch.float64
        total = torch.zeros((), dtype=acc, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        loader = iter(self._loader(batches))
        nxt = self._prepare(*next(loader), g)
        for step in tqdm(range(len(batches)), disable=not self.progress, leave=False,
                         desc=f"epoch {self.epoch + 1}"):
            x, y = nxt
            emb, logits, loss = self._first_compiled_step(x, y) if self._compile_unproven \
                else self._forward_backward(x, y)
            with torch.no_grad():  # accuracy of the plain cosine classifier (no margin), with
                # the class centres that gave this loss (after the step they fit the batch)
                cos = self.head.cosine(emb.detach().float()) if hasattr(self.head, "cosine") \
                    else logits.detach()
                correct += (cos.argmax(1) == y).sum()
            # the next batch is read, moved and augmented while the GPU runs this backward:
            # the fp16 loss scaler's step below waits for the GPU (it reads an overflow flag)
            if step + 1 < len(batches):
                nxt = self._prepare(*next(loader), g)
            self.scaler.step(self.opt)
            self.scaler.update()
            total += loss.detach().to(acc) * len(y)
            count += len(y)
        lr = self.opt.param_groups[0]["lr"]  # the rate this epoch trained at
        self.sched.step()
        self.epoch += 1
        if self.world > 1:  # the log reports all ranks' samples
            sums = torch.stack([total, correct.to(acc),
                                torch.tensor(float(count), dtype=acc, device=self.device)])
            torch.distributed.all_reduce(sums)
            total, correct, count = sums[0], sums[1].long(), int(sums[2])
        return {"epoch": self.epoch, "loss": float(total) / count,
                "train_acc": int(correct) / count, "lr": lr}

    def run(self, epochs: int) -> list[dict]:
        """Train (or resume) up to ``epochs``; append to ``log.csv``; checkpoint each epoch."""
        import pandas as pd

        from .utils import keep_rows_through

        self.outdir.mkdir(parents=True, exist_ok=True)
        log_path = self.outdir / "log.csv"
        resumed = self.load()
        if self.epoch > epochs:
            raise ValueError(f"{self.checkpoint_path} is at epoch {self.epoch}, past the "
                             f"{epochs} asked for: its model is not a {epochs}-epoch model. "
                             f"Use a new folder, or delete {self.outdir}/checkpoint*.pt and "
                             "log.csv to train from scratch.")
        if self.is_main and log_path.exists():
            if not resumed:  # a fresh start: an old log would mix two runs' epochs
                log_path.unlink()
            else:  # drop rows past the checkpoint (logged, then killed)
                keep_rows_through(log_path, "epoch", self.epoch, "the training log (CSV)",
                                  f"Delete {log_path}; the checkpoint holds the training state.")
        rows = []
        while self.epoch < epochs:
            row = self.train_epoch()
            # the row first: a kill before the checkpoint leaves a row past it, which the
            # resume drops (the other order would lose the row for good)
            if self.is_main:
                pd.DataFrame([row]).to_csv(log_path, mode="a", header=not log_path.exists(),
                                           index=False)
            self.save()
            if self.world > 1:  # no rank runs ahead of the checkpoint on disk
                torch.distributed.barrier()
            rows.append(row)
        return rows
