"""A context model trained apart, on the symbols of a frozen model (`imgcomp train-context`).

The decoder's output depends only on the symbols, so a better context model lowers the rate
at identical reconstructions. The autoencoder and quantizer of a trained model stay frozen;
the symbol volumes of random training crops (drawn as train.py's loader draws them) are
computed once and cached; the context model is trained on them alone, for the cross-entropy
of the symbols (the rate term of the loss), and saved in a new log dir beside the unchanged
autoencoder and quantizer weights. Its fingerprint differs, so a file of the old model still
decodes with the old model only.

The context model starts from the frozen model's, also a wider (arch_param__k) or deeper one
(arch_param__num_res_blocks): the added channels reach the old ones through zero weights and
each added block's second convolution starts at zero (the block is the identity), so training
starts at the frozen model's rate and the added parts learn from there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from imgcomp.base.atomic import atomic_path
from imgcomp.base.image_files import DatasetError
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.checkpoints import zoo
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config, ConfigError, load_config
from imgcomp.config.schema import PC_SCHEMA
from imgcomp.data.loaders import make_loader
from imgcomp.entropy_coding.bitstream import model_fingerprint
from imgcomp.nets.probclass import ProbClassifier
from imgcomp.train.console import ConsoleLog, Progress, log
from imgcomp.train.context_flags import build_arg_parser
from imgcomp.train.optimization import learning_rate, make_optimizer

SYMBOLS_DIRNAME = "symbols"  # under the log dir root: the default place of symbol caches


class ContextTrainingError(ValueError):
    """The model, config or symbol cache do not fit together; the message says how."""


@torch.no_grad()
def crop_symbols(codec: ImageCodec, datasets: list[str], crop_size: int, epochs: int,
                 seed: int, batch_size: int = 8) -> Tensor:
    """(N, C, h, w) uint8 symbols of `epochs` random crops of each image of `datasets`, drawn
    by train.py's loader (training crops: shuffled, full batches), in that order."""
    codec.eval()
    volumes = []
    for spec in datasets:
        loader, num_images = make_loader(spec, (crop_size, crop_size), batch_size, train=True,
                                         num_workers=0, seed=seed)
        with tqdm(total=epochs * (num_images // batch_size), desc=f"symbols of {spec}",
                  unit="batch", leave=False) as bar:
            for epoch in range(epochs):
                loader.set_epoch(epoch)
                for x in loader:
                    z, _ = codec.autoencoder.encode(
                        x.to(codec.device).contiguous(memory_format=torch.channels_last))
                    volumes.append(codec.quantizer.symbols(z).to("cpu", torch.uint8))
                    bar.update()
    if not volumes:
        raise DatasetError(f"no crops of {' '.join(datasets)} (fewer images than a batch of "
                           f"{batch_size}?)")
    return torch.cat(volumes)


def cached_crop_symbols(path: Path, codec: ImageCodec, datasets: list[str], crop_size: int,
                        epochs: int, seed: int) -> Tensor:
    """crop_symbols, read from the cache `path` if it holds those of this model and crops,
    else computed and written there; ContextTrainingError if it holds others."""
    meta = {"fingerprint": model_fingerprint(codec).hex(), "datasets": list(datasets),
            "crop_size": crop_size, "epochs": epochs, "seed": seed}
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            cached_meta, symbols = cached["meta"], cached["symbols"]
        except Exception as e:  # torch raises many kinds on truncated/corrupt files
            raise ContextTrainingError(f"{path}: not a symbol cache ({e})") from e
        if cached_meta != meta:
            raise ContextTrainingError(f"{path} holds the symbols of {cached_meta}, not of "
                                       f"{meta}; delete it or name another --symbols")
        log.info(f"Symbols of {len(symbols)} crops read from {path}")
        return symbols
    start = time.perf_counter()
    symbols = crop_symbols(codec, datasets, crop_size, epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"meta": meta, "symbols": symbols}, tmp)
    log.info(f"Symbols of {len(symbols)} crops {tuple(symbols.shape[1:])} computed in "
             f"{time.perf_counter() - start:.0f} s, cached in {path}")
    return symbols


def grown_codec(frozen: ImageCodec, pc_cfg: Config) -> ImageCodec:
    """A codec with `frozen`'s autoencoder and quantizer weights and the context model of
    `pc_cfg`, computing `frozen`'s function to start with, also when wider or deeper (see
    grow_probclass)."""
    old = frozen.probclass
    num_blocks = (len(old.layers) - 2) // 2
    # What the frozen weights need to carry over: the same, or at least as many.
    same = {"arch": "res_shallow", "kernel_size": old.layers[0].conv.kernel_size[-1],
            "logits_relu": old.layers[-1].relu,
            "use_centers_for_padding": frozen.use_centers_for_padding}
    at_least = {"arch_param__k": old.layers[0].conv.out_channels,
                "arch_param__num_res_blocks": num_blocks}
    mismatched = [f"{key} = {pc_cfg[key]!r} (the model's: {value!r})"
                  for key, value in same.items() if pc_cfg[key] != value]
    mismatched += [f"{key} = {pc_cfg[key]!r} (the model's: {value!r}; at least that)"
                   for key, value in at_least.items() if pc_cfg[key] < value]
    if mismatched:
        raise ContextTrainingError(f"{pc_cfg.source_path}: does not fit the model's context "
                                   f"model: {', '.join(mismatched)}")
    probclass = ProbClassifier.from_config(pc_cfg, frozen.quantizer.num_centers)
    grow_probclass(probclass, old)
    codec = ImageCodec(frozen.autoencoder, frozen.quantizer, probclass,
                       frozen.use_centers_for_padding, frozen.output_uint8)
    return codec.to(frozen.device).eval()


@torch.no_grad()
def grow_probclass(probclass: ProbClassifier, trained: ProbClassifier) -> None:
    """Load `trained`'s weights into the wider and/or deeper `probclass` so that it computes
    the same logits: each weight tensor of `trained` fills the leading channels of its own;
    the weights from the added channels are zero (they reach no old channel), those into
    them keep their random start (the added channels are alive and learn); each added
    block's second conv is zero (the block is the identity)."""
    trained_state = trained.state_dict()
    for name, tensor in probclass.state_dict().items():  # views of the parameters
        if name not in trained_state:
            continue
        old = trained_state[name]
        if tensor.dim() > 1:
            tensor[:, old.shape[1]:] = 0
        tensor[tuple(slice(0, n) for n in old.shape)] = old
    for layer in probclass.layers:
        if layer.skip_from is not None and f"{layer.name}.weight" not in trained_state:
            layer.conv.weight.zero_()
            layer.conv.bias.zero_()


def mean_bits(codec: ImageCodec, symbols: Tensor) -> Tensor:
    """Mean bits per symbol of a batch of (N, C, h, w) symbols under the context model: the
    rate it is trained on (the loss's cross-entropy)."""
    symbols = symbols.to(codec.device).long()
    with torch.no_grad():
        centres = codec.quantizer.dequantize(symbols)
    return codec.bitcost(centres, symbols).mean()


@torch.no_grad()
def held_out_bits(codec: ImageCodec, symbols: Tensor, batch_size: int) -> float:
    """Mean bits per symbol over `symbols`, by batches."""
    total = sum(float(mean_bits(codec, batch)) * len(batch)
                for batch in symbols.split(batch_size))
    return total / len(symbols)


def train_context_model(codec: ImageCodec, train: Tensor, held_out: Tensor, pc_cfg: Config,
                        steps: int, batch_size: int, seed: int, log_interval: int
                        ) -> list[tuple[int, float]]:
    """Train `codec.probclass` (in place) on the symbol volumes `train` for the cross-entropy
    of the symbols: pc_cfg's optimizer and learning rate, its DECAY counting epochs of
    `train`, batches drawn without replacement within each epoch. Returns (step, bits per
    symbol on `held_out`) at the start, every `log_interval` steps and at the end."""
    generator = torch.Generator().manual_seed(seed)
    epoch_steps = len(train) / batch_size
    params = list(codec.probclass.parameters())
    optimizer = make_optimizer(params, pc_cfg, pc_cfg.lr_initial)
    history = [(0, held_out_bits(codec, held_out, batch_size))]
    log.info(f"step 0: held-out {history[0][1]:.5f} bits per symbol")
    order = torch.empty(0, dtype=torch.long)
    progress = Progress(0, steps)
    for step in range(steps):
        if len(order) < batch_size:  # a new epoch
            order = torch.randperm(len(train), generator=generator)
        batch, order = train[order[:batch_size]], order[batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(pc_cfg, step, epoch_steps)
        loss = mean_bits(codec, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(step + 1)
        if (step + 1) % log_interval == 0 or step + 1 == steps:
            history.append((step + 1, held_out_bits(codec, held_out, batch_size)))
            log.info(f"step {step + 1}: train {float(loss.detach()):.5f}, held-out "
                     f"{history[-1][1]:.5f} bits per symbol, "
                     f"lr {learning_rate(pc_cfg, step, epoch_steps):.3g}")
    progress.close()
    return history


def save_log_dir(log_dir_root: str | os.PathLike, frozen_log_dir: Path, pc_config_path: str,
                 codec: ImageCodec, ae_cfg: Config, pc_cfg: Config, steps: int, final_lr: float
                 ) -> Path:
    """A new log dir `ROOT/MMDD_HHMM <ae> <pc> RESTORE@<root>@<job>` for `codec`: the frozen
    model's ae config, `pc_cfg`, and a checkpoint of the frozen model's step (its ae_schedule
    kept; the context model's `steps` and final learning rate as pc_schedule)."""
    source = ckpt.load_checkpoint(ckpt.checkpoint_path(frozen_log_dir))
    # Named as the frozen model (its ae config's job name, its root's folder name and job id),
    # never by a path of this machine.
    ae_name = frozen_log_dir.name.split(" ")[1] if " " in frozen_log_dir.name else "frozen"
    log_dir = ckpt.make_log_dir(log_dir_root, ae_name, pc_config_path,
                                restore_dir=Path(frozen_log_dir.parent.name) / frozen_log_dir.name)
    ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
    ckpt.write_configs(ckpt_dir, ae_cfg, pc_cfg)
    state = {"model": {k: v.cpu() for k, v in codec.state_dict().items()},
             **{k: source[k] for k in ("ae_schedule",) if k in source},
             "pc_schedule": {"base_lrs": [pc_cfg.lr_initial], "last_epoch": steps,
                             "_last_lr": [final_lr]}}
    ckpt.save_checkpoint(ckpt_dir, int(source["step"]), state, keep=0)
    return log_dir


def run(args) -> Path:
    """Train as the command line says; the new log dir."""
    frozen_model = zoo.find(args.model)
    frozen = zoo.load_model(frozen_model)
    ae_cfg, _ = ckpt.read_configs(ckpt.ckpt_dir_of(frozen_model.log_dir))
    pc_cfg = load_config(args.pc_config, PC_SCHEMA)
    codec = grown_codec(frozen, pc_cfg)
    crop_size = args.crop_size or int(ae_cfg.crop_size[0])
    cache = Path(args.symbols or Path(args.log_dir_root) / SYMBOLS_DIRNAME / (
        f"{model_fingerprint(frozen).hex()}_c{crop_size}_e{args.epochs}_s{args.seed}.pt"))
    symbols = cached_crop_symbols(cache, frozen, args.data, crop_size, args.epochs, args.seed)
    if len(symbols) <= args.held_out:
        raise ContextTrainingError(f"{len(symbols)} crops: too few to keep {args.held_out} "
                                   "out of training (--held_out)")
    # The loader shuffled the crops: the last ones are a random held-out sample.
    train, held_out = symbols[:-args.held_out], symbols[-args.held_out:]
    num_params = sum(p.numel() for p in codec.probclass.parameters())
    log.info(f"Context model of {args.pc_config} ({num_params} parameters) on the frozen "
             f"{frozen_model.name}: {len(train)} crops, "
             f"{len(held_out)} held out, {args.steps} steps of {args.batch_size}, "
             f"{torch.get_num_threads()} threads")
    start = time.perf_counter()
    history = train_context_model(codec, train, held_out, pc_cfg, args.steps, args.batch_size,
                                  args.seed, args.log_interval)
    log.info(f"Trained in {time.perf_counter() - start:.0f} s: held-out bits per symbol "
             f"{history[0][1]:.5f} -> {history[-1][1]:.5f} "
             f"({100 * (history[-1][1] / history[0][1] - 1):+.2f} %)")
    final_lr = learning_rate(pc_cfg, args.steps - 1, len(train) / args.batch_size)
    return save_log_dir(args.log_dir_root, Path(frozen_model.log_dir), args.pc_config, codec,
                        ae_cfg, pc_cfg, args.steps, final_lr)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    console = ConsoleLog(is_main=True)
    try:
        log_dir = run(args)
        console.to_file(log_dir)
        log.info(f"Saved {log_dir}")
        return 0
    except (ContextTrainingError, ConfigError, DatasetError, ckpt.CheckpointError) as e:
        log.error(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted; nothing saved.")
        return 130
    finally:
        console.close()


if __name__ == "__main__":
    sys.exit(main())
