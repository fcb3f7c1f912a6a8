"""Loss, optimization and train.py end to end (tiny configs, few steps, small images)."""

import argparse
import copy
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config, load_config
from imgcomp.data.records import write_image_records
from imgcomp.train import console as train_console
from imgcomp.train import heap as train_heap
from imgcomp.train import optimization
from imgcomp.train import run as train_run
from imgcomp.train import trainer as trainer_module
from imgcomp.train.losses import compute_loss

ROOT = Path(__file__).resolve().parents[1]
TF_WRITTEN = ROOT / "tests/data/tf_written"


@pytest.fixture
def run_train(tmp_path, ae_tiny, pc_tiny, train_images):
    """train.py's main on the shared images (or `dataset`), logging to tmp_path / "logs":
    run_train(*flags, dataset=None) -> (exit code, log root)."""
    def run(*extra: str, dataset: str | None = None) -> tuple[int, Path]:
        data = dataset or str(train_images / "*.png")
        logs = tmp_path / "logs"
        code = train_run.main([ae_tiny, pc_tiny, "--dataset_train", data, "--dataset_test",
                              data, "--log_dir_root", str(logs), "--num_workers", "0", *extra])
        return code, logs

    return run


def _only_log_dir(logs: Path) -> Path:
    dirs = [p for p in logs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_loss_decreases_on_a_fixed_batch(tiny_configs):
    torch.manual_seed(0)
    ae_cfg, pc_cfg = tiny_configs
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    x = torch.rand(4, 3, 32, 32) * 255
    first = trainer.train_step(x)
    for _ in range(25):
        last = trainer.train_step(x)
    assert trainer.step == 26
    assert float(last.total.detach()) < 0.8 * float(first.total.detach())
    assert float(last.H_soft) < float(first.H_soft)  # the rate term trains both networks
    assert float(last.ms_ssim) > float(first.ms_ssim)


def test_bf16_runs_the_convolutions_in_bfloat16_and_keeps_loss_and_weights_float32(
        tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    x = torch.rand(4, 3, 32, 32) * 255
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"),
                                         num_train_images=100, bf16=bf16)
        conv_dtypes = set()
        for m in trainer.model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Conv3d)):
                m.register_forward_hook(lambda _m, _i, out, seen=conv_dtypes: seen.add(out.dtype))
        terms = trainer.train_step(x)
        assert conv_dtypes == {torch.bfloat16 if bf16 else torch.float32}
        assert terms.total.dtype == terms.ms_ssim.dtype == torch.float32
        assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
        losses[bf16] = float(terms.total.detach())
        # Evaluation stays float32.
        conv_dtypes.clear()
        trainer.evaluate(iter([x]))
        assert conv_dtypes == {torch.float32}
    # The same initial weights and batch: the first loss differs by bfloat16's rounding only.
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
    assert losses[True] != losses[False]


def test_train_py_bf16_trains_and_checkpoints_float32_weights(run_train, monkeypatch):
    made = []
    monkeypatch.setattr(train_run, "Trainer", lambda *a, **k: made.append(k) or
                        trainer_module.Trainer(*a, **k))
    code, logs = run_train("--max_steps", "2", "--log_interval_test", "-1", "--bf16")
    assert code == 0 and made == [{"bf16": True}]
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(_only_log_dir(logs) / "ckpts"))
    assert state["step"] == 2
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}


def test_train_switches_freeze_parts(tiny_configs):
    torch.manual_seed(0)
    ae_cfg = tiny_configs[0]
    frozen = ae_cfg.to_dict() | {"train_autoencoder": False}
    trainer = trainer_module.Trainer(type(ae_cfg)(frozen), tiny_configs[1], torch.device("cpu"),
                               num_train_images=100)
    ae_before = [p.detach().clone() for p in trainer.model.autoencoder.parameters()]
    pc_before = [p.detach().clone() for p in trainer.model.probclass.parameters()]
    trainer.train_step(torch.rand(4, 3, 32, 32) * 255)
    ae_after = list(trainer.model.autoencoder.parameters())
    pc_after = list(trainer.model.probclass.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ae_before, ae_after, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(pc_before, pc_after, strict=True))


def test_training_heap_keeps_freed_blocks_and_releases_them_only_on_growth(monkeypatch):
    calls = []
    monkeypatch.setattr(train_heap, "MALLOPT", lambda param, value: calls.append(
        (param, value)) or value < 1 << 30)  # refuses 1 GiB, as an old glibc might
    # (now, peak) bytes after steps 1..4: the first step's peak sets the limit
    resident = iter([(700, 1000), (1240, 1240), (1300, 1300), (1300, 1300)])
    free_heap = iter([10**9, 10**3])  # free heap at the two checks over the limit
    trims = []
    monkeypatch.setattr(train_heap, "resident_bytes", lambda: next(resident))
    monkeypatch.setattr(train_heap, "MALLINFO2",
                        lambda: type("Info", (), {"fordblks": next(free_heap)}))
    monkeypatch.setattr(train_heap, "MALLOC_TRIM", trims.append)
    heap = train_heap.TrainingHeap()
    # No automatic trimming; large blocks stay in the heap (32 MiB when 1 GiB is refused).
    assert calls == [(-1, -1), (-3, 1 << 30), (-3, 32 << 20)]
    heap.after_step()  # step 1 sets the limit: 25 % over its peak
    assert heap.limit == 1250 and trims == []
    heap.after_step()  # 1240: within the limit
    assert trims == []
    heap.after_step()  # 1300 with a gigabyte free: given back
    assert trims == [0] and heap.releases == 1
    heap.after_step()  # 1300 with little free: nothing to give back
    assert trims == [0]


def test_train_step_frees_gradients_after_the_update(tiny_configs):
    trainer = trainer_module.Trainer(*tiny_configs, torch.device("cpu"), num_train_images=100)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(torch.rand(2, 3, 32, 32) * 255)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                     strict=True))


def test_staircase_lr_schedule():
    cfg = load_config(ROOT / "ae_configs/cvpr/base")  # decay 0.1 every 2 epochs, staircase
    steps_per_epoch = 10.0
    assert optimization.lr_factor(cfg, 0, steps_per_epoch) == 1.0
    assert optimization.lr_factor(cfg, 19, steps_per_epoch) == 1.0
    assert optimization.lr_factor(cfg, 20, steps_per_epoch) == pytest.approx(0.1)
    assert optimization.lr_factor(cfg, 45, steps_per_epoch) == pytest.approx(0.01)


def _decaying(cfg: Config, staircase: bool, centers_factor: float | None = None) -> Config:
    """`cfg` with a DECAY schedule of 0.5 every 2 epochs (50 steps at 100 images, batch 4)."""
    return Config(cfg.to_dict() | {
        "lr_schedule": "DECAY", "lr_schedule_decay_rate": 0.5,
        "lr_schedule_decay_interval": 2, "lr_schedule_decay_staircase": staircase,
        "lr_centers_factor": centers_factor})


@pytest.mark.parametrize("staircase", [True, False])
def test_learning_rates_equal_the_lambdalr_schedules_of_earlier_versions(staircase, tiny_configs):
    """Each step's rates are bit for bit those of the torch LambdaLR schedules used before
    (base rate * factor(step) for the update from step to step + 1), centres included."""
    ae_cfg = _decaying(tiny_configs[0], staircase, centers_factor=0.3)
    pc_cfg = _decaying(tiny_configs[1], staircase)
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    epoch = trainer.steps_per_epoch
    references = []
    for cfg, bases in ((ae_cfg, [ae_cfg.lr_initial, ae_cfg.lr_initial * 0.3]),
                       (pc_cfg, [pc_cfg.lr_initial])):
        optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b}
                                     for b in bases])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, cfg=cfg: optimization.lr_factor(cfg, s, epoch))
        references.append((optimizer, schedule))
    for step in range(300):
        expected = tuple(schedule.get_last_lr() for _, schedule in references)
        assert trainer.learning_rates(step) == expected, step
        for optimizer, schedule in references:
            optimizer.step()
            schedule.step()
    assert trainer.learning_rates(299)[0][0] <= ae_cfg.lr_initial * 0.5**5  # it did decay


def _rates_in_use(trainer: trainer_module.Trainer) -> tuple[list[float], list[float]]:
    return tuple([g["lr"] for g in optimizer.param_groups]
                 for optimizer in (trainer.ae_optimizer, trainer.pc_optimizer))


def test_train_step_uses_the_rates_of_its_step_and_restore_continues_them(tiny_configs):
    """The rates set before each update are those of the step it starts from; a trainer
    restored at step 3 takes steps 3 and 4 exactly as the one that went on."""
    ae_cfg = _decaying(tiny_configs[0], staircase=False, centers_factor=2.0)
    pc_cfg = _decaying(tiny_configs[1], staircase=False)
    torch.manual_seed(0)
    batches = [torch.rand(4, 3, 32, 32) * 255 for _ in range(5)]
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=8)
    used, saved = [], None
    for step, x in enumerate(batches):
        if step == 3:
            saved = copy.deepcopy(trainer.state_dict()) | {"step": trainer.step}
        trainer.train_step(x)
        used.append(_rates_in_use(trainer))
        assert used[-1] == trainer.learning_rates(step)
    assert len({rates[0][0] for rates in used}) == 5  # a new rate every step (2 per epoch)
    restored = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=8)
    restored.restore(saved, [])
    for step, x in enumerate(batches[3:], start=3):
        restored.train_step(x)
        assert _rates_in_use(restored) == used[step]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], value), name


def test_train_from_glob_writes_log_dir_checkpoint_and_events(run_train, tiny_configs,
                                                              capsys):
    code, logs = run_train("--max_steps", "3", "--log_interval_train", "1",
                           "--log_interval_test", "2", "--log_interval_save", "2")
    assert code == 0
    log_dir = _only_log_dir(logs)
    assert re.fullmatch(r"\d{4}_\d{4} ae_tiny pc_tiny", log_dir.name)
    ckpt_dir = log_dir / "ckpts"
    assert [s for s, _ in ckpt.list_checkpoints(ckpt_dir)] == [2, 3]
    assert load_config(ckpt_dir / "ae_config") == tiny_configs[0]
    assert load_config(ckpt_dir / "pc_config") == tiny_configs[1]
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert not list(ckpt_dir.glob(".*tmp"))  # no temp files left from atomic saves
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(ckpt_dir))
    assert state["step"] == 3 and "ae_optimizer" in state and "pc_schedule" in state
    out = capsys.readouterr().out
    assert re.search(r"\s3: loss=[\d.]+\s+ms_ssim=[\d.]+.*bpp=[\d.]+\s+H_real=[\d.]+.*img/s", out)
    assert "[test] ms_ssim=" in out
    # With --max_steps, each train summary ends with the time left.
    assert len(re.findall(r" img/s  eta \d+:\d\d:\d\d\n", out)) == 3
    # train.py writes its console lines into the log dir itself.
    assert (log_dir / "console.log").read_text() == out


def test_a_short_run_shows_its_progress_and_first_step(run_train, monkeypatch, capsys):
    """Whatever the intervals (here the defaults: summaries every 100 steps), a run shows its
    progress with the time left (a line every PROGRESS_LINE_SECONDS without a terminal, on
    stderr, never in console.log) and summarizes its first and last steps, in TensorBoard
    too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(train_console, "PROGRESS_LINE_SECONDS", 0.0)
    code, logs = run_train("--max_steps", "3")
    assert code == 0
    out, err = capsys.readouterr()
    assert re.findall(r"^\s+(\d+): loss=", out, re.M) == ["1", "3"]
    assert re.findall(r"^step (\d)/3 \(\d+%\), [\d.]+ steps/s, eta \d+:\d\d:\d\d$", err,
                      re.M) == ["1", "2", "3"]
    log_dir = _only_log_dir(logs)
    assert (log_dir / "console.log").read_text() == out
    events = EventAccumulator(str(log_dir)).Reload()
    assert [e.step for e in events.Scalars("train/total")] == [1, 3]


def test_progress_bar_on_a_terminal():
    """On a terminal: a bar, steps out of --max_steps with the time left."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    progress = train_console.Progress(10, 20, terminal)
    for step in (15, 20):
        time.sleep(0.15)  # the bar is redrawn at most every 0.1 s
        progress.update(step)
    drawn = terminal.getvalue()
    assert re.search(r"15/20 \[00:00<00:0\d, [\d.]+step/s\]", drawn)  # <time left
    assert "20/20 [" in drawn and "\n" not in drawn  # redrawn in place
    progress.close()
    assert terminal.getvalue().endswith("\r")  # and gone when the run ends


def test_config_notes_go_to_the_console_log_and_nothing_else(ae_tiny, pc_tiny, monkeypatch,
                                                             capsys):
    """The configs' notes on unused keys become train.py's console lines (on the main rank
    only); whatever else writes to stdout meanwhile (another thread, a library) stays there,
    never taken for a note."""
    load_with_notes = train_run.load_config_with_notes

    def printing(*args):
        print("unrelated output")
        return load_with_notes(*args)

    monkeypatch.setattr(train_run, "load_config_with_notes", printing)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(train_console.log, "level", logging.INFO)
    train_console.log.addHandler(handler)
    try:
        args = argparse.Namespace(ae_config=ae_tiny, pc_config=pc_tiny)
        assert train_run.load_configs(args, is_main=True) == (load_config(ae_tiny),
                                                              load_config(pc_tiny))
        notes = [r.getMessage() for r in records]
        capsys.readouterr()
        train_run.load_configs(args, is_main=False)
    finally:
        train_console.log.removeHandler(handler)
    assert notes == [f"note: {os.path.abspath(pc_tiny)}: arch_param__non_linearity, "
                     "arch_param__fc, learn_pad_var: keys of the original's pc configs that the "
                     "port does not use; ignored"]
    assert len(records) == 1  # none on the other ranks
    assert "unrelated output" in capsys.readouterr().out


def test_tensorboard_tags(trained_log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_log_dir), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/bpp", "train/ms_ssim", "train/H_real", "test/bpp", "test/ms_ssim"):
        assert tag in tags["scalars"]
    assert {"input", "output", "heatmap"} <= set(tags["images"])
    assert "train/centers" in tags["histograms"]


def test_restore_continues_at_saved_step(run_train, capsys):
    code, logs = run_train("--max_steps", "2")
    assert code == 0
    log_dir = _only_log_dir(logs)
    first = ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir / "ckpts"))
    first_out = capsys.readouterr().out
    code, _ = run_train("--max_steps", "4", "--restore", str(log_dir / "ckpts"),
                        "--restore_continue")
    assert code == 0
    second_out = capsys.readouterr().out
    assert "(step 2)" in second_out
    # console.log goes on, with the lines printed before the log dir was known (Restored ...).
    assert (log_dir / "console.log").read_text() == first_out + second_out
    assert _only_log_dir(logs) == log_dir  # kept writing into the restored log dir
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [2, 4]
    resumed = ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))
    assert resumed["step"] == 4
    assert resumed["ae_schedule"]["last_epoch"] == 4
    key = "autoencoder.encoder.out.weight"
    assert not torch.equal(first["model"][key], resumed["model"][key])

    # Already at --max_steps: nothing to do, nothing written.
    code, _ = run_train("--max_steps", "4", "--restore", str(log_dir),
                        "--restore_continue")
    assert code == 0 and "nothing to do" in capsys.readouterr().out


def test_restore_into_new_log_dir_and_skip_vars(run_train):
    code, logs = run_train("--max_steps", "1")
    first = _only_log_dir(logs)
    time.sleep(0.01)
    code, _ = run_train("--max_steps", "2", "--restore", str(first),
                        "--restore_skip_vars", "probclass")
    assert code == 0
    dirs = sorted(p for p in logs.iterdir())
    assert len(dirs) == 2  # a new, unique log dir (same minute: job id gets a suffix)
    assert len({ckpt.job_id_of(d) for d in dirs}) == 2
    second = next(d for d in dirs if d != first)
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(second))["step"] == 2


def test_restore_with_a_new_config_uses_its_learning_rate(tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    x = torch.rand(2, 3, 32, 32) * 255
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    for _ in range(3):
        trainer.train_step(x)
    state = trainer.state_dict() | {"step": trainer.step}
    faster = Config(ae_cfg.to_dict() | {
        "lr_initial": 10 * ae_cfg.lr_initial, "lr_schedule": "DECAY",
        "lr_schedule_decay_interval": 1, "lr_schedule_decay_staircase": False})
    restored = trainer_module.Trainer(faster, pc_cfg, torch.device("cpu"), num_train_images=100)
    restored.restore(state, [])
    expected = faster.lr_initial * optimization.lr_factor(faster, 3, 100 / faster.batch_size)
    assert restored.learning_rates(restored.step)[0][0] == pytest.approx(expected)
    restored.train_step(x)  # the update from step 3 to 4, at the new config's rate
    assert restored.ae_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    expected = faster.lr_initial * optimization.lr_factor(faster, 4, 100 / faster.batch_size)
    assert restored.learning_rates(restored.step)[0][0] == pytest.approx(expected)
    assert restored.state_dict()["ae_schedule"]["_last_lr"][0] == pytest.approx(expected)


def test_train_from_records_written_by_our_writer(tmp_path, ae_tiny, pc_tiny, make_images,
                                                  monkeypatch):
    imgs = make_images(tmp_path / "src", 6)
    write_image_records(imgs, tmp_path / "records/train", num_per_shard=4)
    write_image_records(imgs, tmp_path / "records/val")
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path / "records"))
    logs = tmp_path / "logs"
    code = train_run.main([ae_tiny, pc_tiny, "--dataset_train", "imgnet_train",
                          "--dataset_test", "imgnet_test", "--log_dir_root", str(logs),
                          "--max_steps", "2", "--num_workers", "0"])
    assert code == 0
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(_only_log_dir(logs)))["step"] == 2


def test_train_from_records_written_by_tensorflow(tmp_path, ae_tiny, pc_tiny, monkeypatch):
    monkeypatch.setenv("RECORDS_ROOT", str(TF_WRITTEN))
    logs = tmp_path / "logs"
    code = train_run.main([ae_tiny, pc_tiny, "--dataset_train", "imgnet_train",
                          "--dataset_test", "imgnet_test", "--log_dir_root", str(logs),
                          "--max_steps", "1", "--num_workers", "0"])
    assert code == 0
    assert ckpt.list_checkpoints(_only_log_dir(logs))[-1][0] == 1


def test_corrupt_image_is_skipped_with_warning(tmp_path, run_train, make_images):
    folder = tmp_path / "imgs"
    make_images(folder, 6)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="broken.png"):
        code, logs = run_train("--max_steps", "2", dataset=str(folder))
    assert code == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(run_train, monkeypatch, capsys):
    code, logs = run_train("--max_steps", "2")
    log_dir = _only_log_dir(logs)
    real_loss = trainer_module.compute_loss

    def nan_loss(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        return terms._replace(total=terms.total * float("nan"))

    monkeypatch.setattr(trainer_module, "compute_loss", nan_loss)
    code, _ = run_train("--max_steps", "5", "--restore", str(log_dir),
                        "--restore_continue")
    assert code == 1
    err = capsys.readouterr().err
    assert "NaN" in err and "ckpt-2.pt" in err
    assert err in (log_dir / "console.log").read_text()  # errors go to the log too
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [2]


def test_bad_inputs_give_one_clear_error(tmp_path, run_train, capsys):
    code, _ = run_train(dataset=str(tmp_path / "nothing/*.png"))
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nothing" in err and len(err.splitlines()) == 1
    code, _ = run_train("--restore", str(tmp_path / "no_such_dir"))
    assert code == 1 and "no_such_dir" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_checkpoints_the_last_step(tmp_path, workers, ae_tiny, pc_tiny, train_images):
    """SIGTERM to the trainer, or (with loader workers) to its whole process group."""
    data = str(train_images / "*.png")
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), ae_tiny, pc_tiny, "--dataset_train", data,
         "--dataset_test", data, "--log_dir_root", str(logs), "--num_workers", str(workers),
         "--log_interval_train", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # wait until training runs
        if re.match(r"\s+3: loss=", line):
            break
    if workers:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "SIGTERM" in out
    saved = ckpt.list_checkpoints(_only_log_dir(logs))
    assert len(saved) == 1 and saved[0][0] >= 3


def test_k_mse_adds_a_weighted_mse_to_the_ms_ssim_distortion(tiny_configs):
    torch.manual_seed(0)
    ae_cfg, pc_cfg = tiny_configs
    assert ae_cfg.distortion_to_minimize == "ms_ssim" and ae_cfg.K_mse == 0
    model = ImageCodec.from_configs(ae_cfg, pc_cfg).eval()
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        out = model(x)
        plain = compute_loss(model, out, x, ae_cfg, pc_cfg)
        with_mse = compute_loss(model, out, x, Config(ae_cfg.to_dict() | {"K_mse": 0.5}), pc_cfg)
        # Flattened configs written before K_mse existed have no entry: no MSE term.
        legacy = {k: v for k, v in ae_cfg.to_dict().items() if k != "K_mse"}
        old = compute_loss(model, out, x, Config(legacy), pc_cfg)
    expected = 0.5 * float(((out.x_hat - x) ** 2).mean())
    assert float(with_mse.distortion - plain.distortion) == pytest.approx(expected, rel=1e-5)
    assert float(with_mse.total - plain.total) == pytest.approx(expected, rel=1e-5)
    assert float(old.distortion) == pytest.approx(float(plain.distortion), rel=1e-6)


def test_restore_continue_refuses_changed_configs_unless_allowed(run_train, tmp_path, pc_tiny,
                                                                 ae_tiny, train_images, capsys):
    code, logs = run_train("--max_steps", "1")
    log_dir = _only_log_dir(logs)
    ckpt_dir = log_dir / "ckpts"
    trained_with = (ckpt_dir / "ae_config").read_text()
    changed = tmp_path / "ae_changed"
    changed.write_text(f"use {ae_tiny}\nlr_initial = 2e-3\nK_mse = 0.5\n")
    data = str(train_images / "*.png")

    def resume(*extra: str) -> int:
        return train_run.main([str(changed), pc_tiny, "--dataset_train", data, "--dataset_test",
                              data, "--num_workers", "0", "--max_steps", "2", "--restore",
                              str(log_dir), "--restore_continue", *extra])

    capsys.readouterr()
    assert resume() == 1
    err = capsys.readouterr().err
    assert "ae_config lr_initial: 0.001 -> 0.002\n" in err
    assert "ae_config K_mse: 0 -> 0.5\n" in err and "pc_config" not in err
    assert "--restore_allow_config_change" in err
    assert (ckpt_dir / "ae_config").read_text() == trained_with  # nothing written
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [1]

    assert resume("--restore_allow_config_change") == 0
    out = capsys.readouterr().out
    assert "Configs changed at step 1" in out and "lr_initial: 0.001 -> 0.002" in out
    assert (ckpt_dir / "ae_config.step1.old").read_text() == trained_with
    assert (ckpt_dir / "pc_config.step1.old").read_text() == (ckpt_dir / "pc_config").read_text()
    assert ckpt.read_configs(ckpt_dir)[0].lr_initial == 2e-3
    description = (log_dir / "description.txt").read_text()
    assert "step 1  configs changed (old ones kept as ckpts/ae_config.step1.old" in description
    assert "ae_config lr_initial: 0.001 -> 0.002" in description
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [1, 2]
    # A second change at the same step keeps both earlier versions.
    assert [p.name for p in ckpt.keep_old_configs(ckpt_dir, 1)] == [
        "ae_config.step1_2.old", "pc_config.step1_2.old"]
    assert (ckpt_dir / "ae_config.step1.old").read_text() == trained_with
