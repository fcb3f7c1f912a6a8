"""Training, train.py: its flags (`flags`), the entry point that sets a run up
(`run`: configs, log dir, restore, console log), the step loop with checkpoints, summaries and
Ctrl-C (`loop`), the `Trainer` (`trainer`: the model, its two optimizers, a step), the losses
(`losses`), optimizers and learning-rate schedules (`optimization`), and the C heap policy that
keeps steps free of page faults (`heap`).

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.entropy_coding, imgcomp.codec,
imgcomp.original, imgcomp.checkpoints, imgcomp.data, imgcomp.evaluation.
"""
