"""The original's command lines: train.py, val.py and plotter.py flags (names, short forms,
defaults, meaning) and the records writer's `-o OUTPUT_PATH` (docs/faithfulness.md,
"Command lines of the original")."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tfrecord.reader import tfrecord_loader

from imgcomp import cli
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.data.loaders import make_loader
from imgcomp.data.records import main as records_main
from imgcomp.evaluation import plotting, rd_figure, validation
from imgcomp.evaluation import results as measures
from imgcomp.train import flags as train_args
from imgcomp.train import run as train_run
from imgcomp.train import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_train(tmp_path, ae_tiny, pc_tiny, train_images):
    """train.py's main with the original's short flags, on the shared images, logging to
    tmp_path / "logs": run_train(*flags, test_set=None) -> (exit code, log root)."""
    def run(*extra: str, test_set: str | None = None) -> tuple[int, Path]:
        data = str(train_images / "*.png")
        logs = tmp_path / "logs"
        code = train_run.main([ae_tiny, pc_tiny, "-dtrain", data, "-dtest", test_set or data,
                              "-o", str(logs), "--num_workers", "0", *extra])
        return code, logs

    return run


def _log_dirs(logs: Path) -> list[Path]:
    return sorted(p for p in logs.iterdir() if p.is_dir())


# train.py: parsing


def test_train_defaults_are_the_originals():
    args = train_args.build_arg_parser().parse_args(["ae", "pc"])
    assert (args.dataset_train, args.dataset_test, args.log_dir_root) == (
        "imgnet_train", "imgnet_test", "logs")
    assert (args.log_interval_train, args.log_interval_save, args.log_interval_test) == (
        100, 1000, 1000)
    assert args.ckpt_interval == 1.0 and args.restore_itr == -1
    assert not (args.temporary or args.restore_continue or args.log_run_metadata
                or args.summarize_gradients)
    assert args.restore is args.from_identity is args.restore_skip_vars is None


def test_train_short_flags_mean_the_long_ones():
    parse = train_args.build_arg_parser().parse_args
    short = parse(["ae", "pc", "-dtrain", "A", "-dtest", "B", "-dcodec", "C", "-o", "D",
                   "-ltrain", "5", "-lsave", "6", "-ltest", "-1", "-lmeta", "-lgrads", "-t",
                   "-r", "E", "-i", "7", "-d", "text"])
    long = parse(["ae", "pc", "--dataset_train", "A", "--dataset_test", "B",
                  "--dataset_codec_distance", "C", "--log_dir_root", "D",
                  "--log_interval_train", "5", "--log_interval_save", "6",
                  "--log_interval_test", "-1", "--log_run_metadata", "--summarize_gradients",
                  "--temporary", "--restore", "E", "--restore_itr", "7", "--description",
                  "text"])
    assert vars(short) == vars(long)
    assert short.log_interval_test == -1 and short.restore_itr == 7


@pytest.mark.parametrize("flags", [["-ltrain", "0"], ["-lsave", "-1"], ["--ckpt_interval", "-1"],
                                   ["--unknown_flag"]])
def test_train_rejects_bad_values(flags, capsys):
    with pytest.raises(SystemExit):
        train_args.build_arg_parser().parse_args(["ae", "pc", *flags])
    assert "error:" in capsys.readouterr().err


def test_from_identity_and_ignored_flags_notes():
    args = train_args.build_arg_parser().parse_args(
        ["ae", "pc", "--from_identity", "logs/0515_1103 a b", "-dcodec", "testset", "-lmeta",
         "-lgrads", "-d", "why"])
    notes = train_args.resolve_restore_flags(args)
    assert args.restore == "logs/0515_1103 a b" and args.restore_skip_vars == "global_step,Adam"
    joined = "\n".join(notes)
    assert len(notes) == 4
    for flag in ("--dataset_codec_distance", "--log_run_metadata", "--summarize_gradients",
                 "--description"):
        assert flag in joined
    plain = train_args.build_arg_parser().parse_args(["ae", "pc"])
    assert train_args.resolve_restore_flags(plain) == [] and plain.restore is None
    for flags, noted in ((["--restore_allow_config_change"], True),
                         (["-r", "d", "--restore_allow_config_change"], True),
                         (["-r", "d", "--restore_continue", "--restore_allow_config_change"],
                          False)):
        args = train_args.build_arg_parser().parse_args(["ae", "pc", *flags])
        notes = train_args.resolve_restore_flags(args)
        assert notes == ([
            "--restore_allow_config_change has no effect without --restore and "
            "--restore_continue"] if noted else []), flags


# train.py: restoring


def _trained_state(ae_cfg, pc_cfg) -> dict:
    torch.manual_seed(0)
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    x = torch.rand(4, 3, 32, 32) * 255
    for _ in range(2):
        trainer.train_step(x)
    return trainer.state_dict() | {"step": trainer.step}


def test_restore_skip_vars_match_substrings_of_state_dict_names(tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    state = _trained_state(ae_cfg, pc_cfg)
    torch.manual_seed(1)
    fresh = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    init = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    # 'centers' is inside 'quantizer.centers', not a prefix of it.
    skipped = fresh.restore(state, ["centers"])
    assert skipped == ["quantizer.centers"]
    now = fresh.model.state_dict()
    assert torch.equal(now["quantizer.centers"], init["quantizer.centers"])
    others = [k for k in now if k != "quantizer.centers" and now[k].is_floating_point()]
    assert others and all(torch.equal(now[k], state["model"][k]) for k in others)
    assert fresh.step == 2
    assert not fresh.ae_optimizer.state and not fresh.pc_optimizer.state  # Adam afresh

    everything = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    assert everything.restore(state, []) == []
    assert everything.ae_optimizer.state  # nothing skipped: Adam's moments restored


def test_restore_skipping_global_step_and_adam_starts_at_step_0(tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    state = _trained_state(ae_cfg, pc_cfg)
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=100)
    skipped = trainer.restore(state, train_args.FROM_IDENTITY_SKIP_VARS.split(","))
    assert skipped == ["global_step", "Adam_AE", "Adam_PC"]
    assert trainer.step == 0 and trainer.state_dict()["ae_schedule"]["last_epoch"] == 0
    assert not trainer.ae_optimizer.state
    key = "autoencoder.encoder.out.weight"
    assert torch.equal(trainer.model.state_dict()[key], state["model"][key])


def test_restore_itr_takes_the_latest_checkpoint_at_or_before_it(run_train, capsys):
    code, logs = run_train("--max_steps", "3", "-lsave", "1", "--keep_ckpts", "0",
                        "-ltest", "-1")
    assert code == 0
    (first,) = _log_dirs(logs)
    (first / "ckpts" / "ckpt-2.pt").unlink()
    capsys.readouterr()
    time.sleep(0.01)
    code, _ = run_train("-r", str(first), "-i", "2", "--max_steps", "2", "-ltest", "-1")
    assert code == 0
    assert f"Restored {first / 'ckpts' / 'ckpt-1.pt'} (step 1)" in capsys.readouterr().out
    second = next(d for d in _log_dirs(logs) if d != first)
    # The original's name for a log dir made by restoring: RESTORE@<root, / as @>@<job id>.
    root = str(logs).replace(os.sep, "@")
    assert second.name.endswith(f" ae_tiny pc_tiny RESTORE@{root}@{ckpt.job_id_of(first)}")
    assert [s for s, _ in ckpt.list_checkpoints(second)] == [2]

    code, _ = run_train("-r", str(first), "-i", "0", "--max_steps", "2")
    assert code == 1 and "no checkpoint of step <= 0" in capsys.readouterr().err


def test_from_identity_restores_weights_only(run_train, capsys):
    code, logs = run_train("--max_steps", "2", "-ltest", "-1")
    (first,) = _log_dirs(logs)
    weights = ckpt.load_checkpoint(ckpt.checkpoint_path(first))["model"]
    capsys.readouterr()
    time.sleep(0.01)
    code, _ = run_train("--from_identity", str(first), "--max_steps", "1", "-ltest", "-1",
                     "-lsave", "1")
    assert code == 0
    out = capsys.readouterr().out
    assert "(step 0)" in out and "global_step, Adam_AE, Adam_PC" in out
    second = next(d for d in _log_dirs(logs) if d != first)
    assert "RESTORE@" in second.name
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(second))
    assert state["step"] == 1  # counted from 0 again
    key = "autoencoder.encoder.out.weight"
    assert not torch.equal(state["model"][key], weights[key])  # trained on from the weights


def test_restore_suffix_names():
    assert ckpt.restore_suffix("logs/0515_1103 cvpr@low cvpr@res_shallow/ckpts") == (
        "RESTORE@logs@0515_1103")
    assert ckpt.restore_suffix("a/b/0515_1103_2 x y") == "RESTORE@a@b@0515_1103_2"
    assert ckpt.restore_suffix("/abs/logs/0515_1103 x y/") == "RESTORE@@abs@logs@0515_1103"
    assert ckpt.restore_suffix("0515_1103 x y") == "RESTORE@@0515_1103"


def test_make_log_dir_with_restore_suffix(tmp_path):
    now = time.strptime("2026-05-15 11:03", "%Y-%m-%d %H:%M")
    made = ckpt.make_log_dir(tmp_path, "ae_configs/cvpr/low", "pc_configs/cvpr/res_shallow",
                             now, restore_dir="../ckpts/0515_1309 cvpr@med cvpr@res_shallow")
    assert made.name == "0515_1103 cvpr@low cvpr@res_shallow RESTORE@..@ckpts@0515_1309"
    assert ckpt.job_id_of(made) == "0515_1103" and (made / "ckpts").is_dir()


# train.py: testing, checkpoints, description, --temporary


def test_log_interval_test_minus_one_means_no_testing(tmp_path, run_train, capsys):
    # Not even the test set is read: it does not exist here.
    code, logs = run_train("--max_steps", "2", "-ltrain", "1", "-ltest", "-1",
                        test_set=str(tmp_path / "nowhere" / "*.png"))
    assert code == 0
    out = capsys.readouterr().out
    assert "      2: loss=" in out and "[test]" not in out
    code, _ = run_train("--max_steps", "2", "-ltest", "1")
    assert code == 0 and capsys.readouterr().out.count("[test]") == 2


def test_ckpt_interval_zero_keeps_every_checkpoint_leaving_the_window(run_train):
    code, logs = run_train("--max_steps", "3", "-lsave", "1", "--keep_ckpts", "1",
                        "--ckpt_interval", "0", "-ltest", "-1")
    assert code == 0
    (log_dir,) = _log_dirs(logs)
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [1, 2, 3]
    preserved = json.loads((log_dir / "ckpts" / ckpt.PRESERVED_NAME).read_text())
    assert sorted(preserved) == ["1", "2"]
    # The default (1 hour) keeps none of a run this short: the newest only.
    shutil.rmtree(logs)
    code, logs = run_train("--max_steps", "3", "-lsave", "1", "--keep_ckpts", "1",
                        "-ltest", "-1")
    (log_dir,) = _log_dirs(logs)
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [3]


def test_keep_every_hours_rule(tmp_path):
    start = 1_000_000.0
    hours = {1: 0.3, 2: 0.9, 3: 1.1, 4: 1.5, 5: 2.0, 6: 2.2, 7: 3.0, 8: 3.5}

    def save(step, run_start, **kw):
        path = ckpt.save_checkpoint(tmp_path, step, {}, keep=2, run_start=run_start, **kw)
        t = start + hours.get(step, 12.0) * 3600
        os.utime(path, (t, t))  # as if written at that time (it leaves the window later)

    for step in range(1, 9):
        save(step, start, keep_every_hours=1.0)
    # 3 is the first written >= 1 h after the start, 6 the first >= 1 h after 3; the rest
    # left the window of 2 and were deleted.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6, 7, 8]
    # A restarted run (--restore_continue) keeps them; its hours count from its own start.
    save(9, start + 10 * 3600, keep_every_hours=1.0)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6, 8, 9]
    # Without the rule (imgcomp.checkpoints.ship), only the window is kept.
    save(10, None, keep_every_hours=None)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [9, 10]
    assert not (tmp_path / ckpt.PRESERVED_NAME).exists()


def test_description_and_temporary(tmp_path, ae_tiny, pc_tiny, train_images, capsys):
    data = train_images
    logs = tmp_path / "logs"
    code = train_run.main([ae_tiny, pc_tiny, "-dtrain", str(data), "-dtest", str(data),
                          "-o", f"{logs}{os.sep}", "-t", "-d", "first try", "--max_steps", "1",
                          "-ltest", "-1", "--num_workers", "0"])
    assert code == 0
    assert not logs.exists()
    (log_dir,) = _log_dirs(tmp_path / "logs_TMP")
    text = (log_dir / train_args.DESCRIPTION_NAME).read_text()
    assert text.endswith("step 0  first try\n")
    assert "note: --description goes to LOG_DIR/description.txt" in capsys.readouterr().out


# --device of every entry point


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_cuda_is_one_error_line():
    for main, argv in ((train_run.main, ["ae", "pc"]), (validation.main, ["logs", "j", "kodak"]),
                       (cli.main, ["encode", "in.png", "-o", "out.imgc"])):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--device", "cuda"])
        assert str(exit_info.value) == "error: --device cuda but no CUDA device is available"


# val.py


def test_val_flags_and_defaults(capsys):
    parse = validation.build_arg_parser().parse_args
    args = parse(["logs", "0515_1103", "kodak"])
    assert args.ckpt_step == 2 and args.restore_itr is None and args.image_cache_max is None
    assert not (args.save_ours or args.reset or args.real_bpp)
    short = parse(["logs", "j", "kodak", "-o", "-cache", "100", "-i", "5", "-s", "3"])
    long = parse(["logs", "j", "kodak", "--save_ours", "--image_cache_max", "100",
                  "--restore_itr", "5", "--ckpt_step", "3"])
    assert vars(short) == vars(long)
    assert short.save_ours and short.ckpt_step == 3 and short.restore_itr == 5
    # Stricter than the original, which printed "Unknown flags: [...]" and went on.
    with pytest.raises(SystemExit):
        parse(["logs", "j", "kodak", "--nonsense"])
    assert "unrecognized arguments: --nonsense" in capsys.readouterr().err


def test_select_steps_as_the_original():
    steps = [1000, 2000, 3000, 4000, 5000]
    assert validation.select_steps(steps, 2, None) == [1000, 3000, 5000]  # the default
    assert validation.select_steps(steps[:4], 2, None) == [1000, 3000, 4000]
    assert validation.select_steps(steps, 1, None) == steps
    assert validation.select_steps(steps, -1, None) == [5000]
    assert validation.select_steps(steps, -3, None) == [5000]
    with pytest.raises(ValueError, match="--ckpt_step"):
        validation.select_steps(steps, 0, None)
    # --restore_itr: the latest checkpoint at or before it; it overrides --ckpt_step.
    assert validation.select_steps(steps, 2, 3500) == [3000]
    assert validation.select_steps(steps, 2, 3000) == [3000]
    assert validation.select_steps(steps, 2, 99999) == [5000]
    assert validation.select_steps(steps, 2, -1) == [5000]
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of step <= 999"):
        validation.select_steps(steps, 2, 999)


# plotter.py


def test_plotter_flags_and_defaults():
    parse = plotting.build_parser().parse_args
    args = parse(["logs", "a,b", "kodak"])
    # No range given: the original's 0,1.2 (and 0.85,1 for MS-SSIM), widened to fit our points.
    assert args.x_range is None and args.y_range is None and args.style == ["interp"]
    assert rd_figure.DEFAULT_X_RANGE == (0.0, 1.2)
    assert not (args.paper_plot or args.latex or args.paper_figure) and args.output is None
    assert plotting.default_output("kodak") == "plot_Kodak.png"
    assert plotting.default_output("u100") == "plot_Urban100.png"
    assert plotting.default_output("clic") == "plot_clic.png"
    for flag in ("-o", "--output_path", "--output"):
        assert parse(["logs", "a", "kodak", flag, "x.pdf"]).output == "x.pdf"
    both = parse(["logs", "a", "kodak", "--style", "interp", "mean", "--ids", "A", "B"])
    assert both.style == ["interp", "mean"] and both.ids == ["A", "B"]
    ms_ssim = measures.make_curve("Ours", [0.2, 0.5], [0.96, 0.98])
    assert plotting.default_y_range("ms-ssim", [ms_ssim], (0, 1.2)) == (0.85, 1.0)


# Records writer


def test_mk_img_rec_output_file(tmp_path, make_images, capsys):
    paths = make_images(tmp_path / "src", 3)
    out = tmp_path / "records" / "train" / "train-00001.tfrecord"
    assert records_main(["mk_img_rec", *map(str, paths), "-o", str(out),
                         "--feature_key", "image/encoded"]) == 0
    assert out.is_file()
    stored = [bytes(r["image/encoded"])
              for r in tfrecord_loader(str(out), None, {"image/encoded": "byte"})]
    assert stored == [p.read_bytes() for p in paths]
    # Run again with fewer images: the file is replaced, as the original overwrote it.
    assert records_main(["mk_img_rec", str(paths[0]), "--out_record_path", str(out)]) == 0
    assert len(list(tfrecord_loader(str(out), None, {"image/encoded": "byte"}))) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["train-00001.tfrecord"]
    # An existing file without the extension is a record file too.
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert records_main(["mk_img_rec", str(paths[1]), "-o", str(plain)]) == 0
    assert len(list(tfrecord_loader(str(plain), None, {"image/encoded": "byte"}))) == 1
    capsys.readouterr()


def test_mk_img_rec_errors(tmp_path, make_images, capsys):
    paths = make_images(tmp_path / "src", 2, size=(40, 48))
    out = tmp_path / "r.tfrecord"
    assert records_main(["mk_img_rec", *map(str, paths), "-o", str(out),
                         "--assert_size", "41"]) == 1
    assert "below --assert_size 41" in capsys.readouterr().err and not out.exists()
    assert records_main(["mk_img_rec", *map(str, paths), "-o", str(out),
                         "--assert_size", "40"]) == 0
    assert records_main(["mk_img_rec", str(paths[0]), "-o", str(out), "--num_per_shard",
                         "1"]) == 1
    assert "one record file" in capsys.readouterr().err
    shards = tmp_path / "shards"
    assert records_main(["mk_img_rec", *map(str, paths), "-o", str(shards), "--assert_size",
                         "41"]) == 1
    assert not list(shards.glob("*.tfrecord"))  # nothing half-written left behind
    (tmp_path / "old.tfrecord").mkdir()
    assert records_main(["mk_img_rec", str(paths[0]), "-o", str(tmp_path / "old.tfrecord")]) == 1
    assert "is a directory" in capsys.readouterr().err


# The original README's "Prepare ImageNET", step 3, as written there, adapted only in paths:
# `python -m imgcomp.data.records` for `python -m fjcommon tf_records`, and 2 images per file
# instead of 1250. Where GNU parallel is missing, a shell function stands in for it.
README_STEP_3 = """
mkdir -p records/train
mkdir -p records/val

pushd train
find . -name "*.JPEG" | parallel --bar -j64 -N 2 \\
    'OUTPUT_PATH=$(printf "../records/train/train-%05d.tfrecord" {#});' \\
    'python -m imgcomp.data.records mk_img_rec {} -o $OUTPUT_PATH --feature_key image/encoded'
popd

pushd val
find . -name "*.JPEG" | parallel --bar -j16 -N 2 \\
    'OUTPUT_PATH=$(printf "../records/val/val-%05d.tfrecord" {#});' \\
    'python -m imgcomp.data.records mk_img_rec {} -o $OUTPUT_PATH --feature_key image/encoded'
popd
"""

# parallel [--bar] [-jN] -N COUNT CMD...: CMD (its words joined by spaces) once per COUNT input
# lines, {} replaced by those lines (shell-quoted), {#} by the job number.
FAKE_PARALLEL = r"""
parallel() {
    local n=1 job=0 line i cmd
    while [[ $1 == -* ]]; do
        case $1 in -N) n=$2; shift 2;; *) shift;; esac
    done
    cmd="$*"
    while :; do
        local args=()
        for ((i = 0; i < n; i++)); do
            IFS= read -r line || break
            args+=("$(printf '%q' "$line")")
        done
        ((${#args[@]})) || break
        job=$((job + 1))
        local c=${cmd//'{#}'/$job}
        bash -c "${c//'{}'/${args[*]}}" || return 1
    done
}
"""


def test_original_readme_records_commands(tmp_path, make_images, monkeypatch):
    data = tmp_path / "data"
    train = make_images(data / "train" / "n01440764", 2, ext="JPEG")
    train += make_images(data / "train" / "n01443537", 1, ext="JPEG")
    val = make_images(data / "val", 1, ext="JPEG")
    script = ("set -e\n" + ("" if shutil.which("parallel") else FAKE_PARALLEL)
              + README_STEP_3)
    bin_dir = Path(sys.executable).parent  # `python` is this interpreter
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "-c", script], cwd=data, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    made = sorted(str(p.relative_to(data / "records")) for p in (data / "records").rglob("*"))
    assert made == ["train", "train/train-00001.tfrecord", "train/train-00002.tfrecord",
                    "val", "val/val-00001.tfrecord"]
    stored = {bytes(r["image/encoded"])
              for f in (data / "records" / "train").iterdir()
              for r in tfrecord_loader(str(f), None, {"image/encoded": "byte"})}
    assert stored == {p.read_bytes() for p in train}

    monkeypatch.setenv("RECORDS_ROOT", str(data / "records"))
    loader, n = make_loader("imgnet_train", (32, 32), 3, train=False, num_workers=0)
    assert n == 3 and [tuple(b.shape) for b in loader] == [(3, 3, 32, 32)]
    _, n = make_loader("imgnet_test", (32, 32), 1, train=False, num_workers=0)
    assert n == len(val) == 1
