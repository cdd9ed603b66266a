"""The ``dpo-teach`` command: ``demo``, ``data``, ``train``, ``grade`` and ``compare`` (``--help`` on each).

Errors a user can fix (a bad argument, a bad row in a data file, an unusable checkpoint) print one line naming
the problem and the fix, and exit with status 2; they never show a traceback. The parser and the checks of the
arguments are in :mod:`dpo_teach.cli_args`; this module holds the commands.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from dpo_teach.cli_args import (
    COMMANDS,
    SettingWarning,
    UsageError,
    apply_dpo_args,
    build_parser,
    check_context,
    check_model_flags,
    check_out_replaceable,
    check_writable,
    warn_other_reference,
)


def cmd_demo(args) -> None:
    from dpo_teach.pipeline import RUN_OUTPUTS, DemoConfig, run_demo

    preset = check_model_flags(args)
    check_writable(args.out, "--out", directory=True)
    check_out_replaceable(args.out, RUN_OUTPUTS, {"--model": args.model})
    cfg = DemoConfig.with_seed(args.seed, out_dir=args.out, model_path=args.model)
    cfg.world.preset, cfg.prefs.n_prompts = preset, args.pairs
    apply_dpo_args(cfg.dpo, args)
    reference = check_context(args.model, args.max_length, cfg.prefs.max_new_tokens)  # a checkpoint's, loaded once
    if args.rebuild:  # not with --model (check_model_flags): the toy π_ref, built anew and used as it is
        from dpo_teach.world import load_reference

        reference = load_reference(cfg.world, rebuild=True, progress=not args.quiet, verbose=True)
    run_demo(cfg, progress=not args.quiet, reference=reference)


def cmd_data(args) -> None:
    from dpo_teach.data import PreferenceConfig, make_preference_pairs, preferences_text, write_preferences
    from dpo_teach.pipeline import DemoConfig
    from dpo_teach.world import WorldConfig, load_reference

    to_stdout = args.out == "-"  # the rows on standard output (piped on), everything else on standard error
    if not to_stdout:
        check_writable(args.out, "--out", directory=False)
    # π_ref as `train` loads it (seed 0): the pairs must come from the model that training takes as its reference
    log = sys.stderr if to_stdout else sys.stdout
    with contextlib.redirect_stdout(log):
        reference, tokenizer = load_reference(WorldConfig(preset=args.preset), verbose=True)
        rows = make_preference_pairs(reference, tokenizer, PreferenceConfig(
            n_prompts=args.pairs, bt_temperature=args.bt_temperature, seed=args.seed))
    if to_stdout:
        sys.stdout.write(preferences_text(rows))
    else:
        write_preferences(args.out, rows)
    print(f"wrote {len(rows)} preference pairs to {'standard output' if to_stdout else args.out}", file=log)
    if args.preset != DemoConfig().world.preset:  # train measures pairs against this π_ref unless told otherwise
        print(f"these pairs come from the {args.preset} π_ref: train them with "
              f"`dpo-teach train --preset {args.preset}`", file=log)


def cmd_grade(args) -> int:
    from dpo_teach import grading
    from dpo_teach.grading.submissions import JOURNAL_FILE

    folder, out = Path(args.submissions), Path(args.out)
    try:
        is_dir = folder.is_dir()
    except OSError as e:  # under a folder that cannot be searched
        print(f"dpo-teach grade: error: {folder}: {e.strerror}; pass a folder you can read", file=sys.stderr)
        return 2
    if not is_dir:
        print(f"dpo-teach grade: error: {folder} is not a directory; pass the folder that holds the submitted "
              f"notebooks", file=sys.stderr)
        return 2
    try:
        check_writable(out, "--out", directory=True)
        if args.autograder_dir and not Path(args.autograder_dir).is_dir():
            raise UsageError(f"--autograder-dir {args.autograder_dir}: not a directory; pass the folder `make assign` "
                             "wrote (course/autograder)")
        report = grading.grade(folder, out, Path(args.autograder_dir or grading.AUTOGRADER), args.assignment,
                               cell_timeout=args.cell_timeout, timeout=args.timeout, fast=not args.full,
                               jobs=args.jobs, unsafe=args.unsafe, regrade=args.regrade,
                               find_sections=args.sections, log=_print_while_read)
    except (OSError, ValueError, grading.SandboxUnavailable) as e:  # OSError: no bundles, no files, no report
        print(f"dpo-teach grade: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: what is kept, and how to go on
        journal = out / JOURNAL_FILE
        said = str(e) or (f"interrupted; run the same command again: it grades only what {journal} lacks"
                          if journal.is_file() else
                          "interrupted before any notebook was graded: run the same command again")
        print(f"dpo-teach grade: {said}", file=sys.stderr)
        return 130
    _print_while_read(grading.format_table(report))
    _print_while_read(f"wrote {out}/grades.csv (a row per file), {out}/grades_by_student.csv (a row per student, "
                      f"for a gradebook), {out}/grades.json and {out}/feedback/ (a file per student, to hand back)")
    return 0


def _print_while_read(text: str) -> None:
    """``print``, until the reader of standard output has gone (``dpo-teach grade subs | head``): then the rest is
    not printed, and the batch grades on and writes its reports (it used to end with exit 2, half graded)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    with contextlib.suppress(OSError, ValueError):  # no second error as Python flushes standard output at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_train(args) -> None:
    from dpo_teach.data import split_heldout, warn_heldout_overlap, warn_label_problems
    from dpo_teach.dpo import FLAGS, DPOConfig, train_dpo
    from dpo_teach.evaluate import preference_accuracy
    from dpo_teach.logprobs import tokenize_pairs
    from dpo_teach.losses import LABELS
    from dpo_teach.model import context_length, save_checkpoint
    from dpo_teach.pipeline import TRAIN_OUTPUTS
    from dpo_teach.plots import course_figures, plot_dpo_history, save_figure
    from dpo_teach.preference_file import check_preferences, read_preferences, warn_cut
    from dpo_teach.utils import atomic_dir, atomic_write_json
    from dpo_teach.world import WorldConfig, load_reference

    preset = check_model_flags(args)
    cfg = DPOConfig()
    apply_dpo_args(cfg, args)  # a loss's option given with another loss: refused before anything is read
    data = read_preferences(args.data, args.skip_invalid)  # fail fast, before any model is loaded or built
    check_writable(args.out, "--out", directory=True)
    check_out_replaceable(args.out, TRAIN_OUTPUTS, {"--data": args.data, "--model": args.model}, "a train run")
    checkpoint = check_context(args.model, args.max_length)
    if args.model is None:
        warn_other_reference(args.data, WorldConfig(preset=preset))
    reference, tokenizer = checkpoint or load_reference(WorldConfig(preset=preset), verbose=True)
    context = context_length(reference)
    data = check_preferences(args.data, data, tokenizer, args.max_length, args.skip_invalid,  # prompts vs the length
                             context=context)
    if data.skipped:
        line, reason = data.skipped[0]
        print(f"skipped {len(data.skipped)} invalid rows of {args.data} (first: line {line}: {reason})")
    examples = tokenize_pairs(tokenizer, data.rows, args.max_length)  # once: counted here, trained and evaluated on
    warn_cut(args.data, examples, tokenizer.eos_token_id, args.max_length, context, stacklevel=1)
    warn_label_problems(args.data, data.rows)
    train_rows, heldout = split_heldout(data.rows, args.eval_fraction, args.seed, args.data)
    warn_heldout_overlap(args.data, train_rows, heldout)
    if cfg.batch_size > len(train_rows):  # a slip (an extra zero) that trains next to nothing, and says nothing
        warnings.warn(f"--batch-size {cfg.batch_size} is more than the {len(train_rows)} training pairs: each epoch is "
                      f"one step over all of them ({cfg.epochs} step{'s' * (cfg.epochs != 1)} in all); pass a batch "
                      "size below the number of pairs", SettingWarning, stacklevel=1)
    tokenized = {id(row): e for row, e in zip(data.rows, examples, strict=True)}
    policy = copy.deepcopy(reference)
    history = train_dpo(policy, reference, tokenizer, train_rows, cfg, progress=not args.quiet, flags=FLAGS,
                        examples=[tokenized[id(row)] for row in train_rows])
    out = Path(args.out)
    with atomic_dir(out) as work:  # an interrupted run leaves an earlier run in --out intact
        save_checkpoint(policy, tokenizer, work / "policy")
        accuracy = preference_accuracy(policy, reference, tokenizer, heldout, cfg.max_length,
                                       examples=[tokenized[id(row)] for row in heldout])
        atomic_write_json(work / "history.json", history)
        atomic_write_json(work / "metrics.json", {
            "heldout_accuracy": accuracy, "n_train_pairs": len(train_rows), "n_heldout_pairs": len(heldout),
            "skipped_rows": [{"line": n, "reason": r} for n, r in data.skipped], "config": asdict(cfg),
            **run_inputs(args, preset)})
        with course_figures():
            save_figure(plot_dpo_history(history, title=f"{LABELS[cfg.loss_type]} training"),
                        work / "training_curves.png")
    coarse = (f" (one pair is {1 / len(heldout):.3f} of it: a larger --eval-fraction gives a finer number)"
              if len(heldout) < FINE_ACCURACY else "")
    print(f"{len(history)} steps; final loss {history[-1]['loss']:.4f}; held-out implicit-reward accuracy "
          f"{accuracy:.3f} on {len(heldout)} pairs{coarse}")
    print(f"wrote {out}/policy/, metrics.json, history.json, training_curves.png")


FINE_ACCURACY = 20  # held-out pairs below which train says how coarse its accuracy is (3 pairs: 0, 1/3, 2/3 or 1)


def run_inputs(args, preset: str | None) -> dict:
    """What a train run read, for its metrics.json: the data and the model as absolute paths (as typed, a relative
    path names nothing once the folder is moved), the toy preset where no --model was given, the held-out split's
    settings and the versions that computed it."""
    import torch
    import transformers

    import dpo_teach

    return {"data": str(Path(args.data).resolve()), "model": str(Path(args.model).resolve()) if args.model else None,
            "preset": None if args.model else preset, "eval_fraction": args.eval_fraction,
            "heldout_seed": args.seed, "skip_invalid": args.skip_invalid,
            "versions": {"dpo-teach": dpo_teach.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__}}


def cmd_compare(args) -> None:
    from dataclasses import replace

    from dpo_teach.compare import CompareConfig, run_comparison

    cfg = CompareConfig.fast() if args.fast else CompareConfig()
    if args.methods:
        from dpo_teach.frontier import METHODS

        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        cfg = replace(cfg, methods=tuple(dict.fromkeys(args.methods)))
    seeds = tuple(dict.fromkeys(args.seeds or ()))  # --seeds 0 0 is one seed: no spread to measure
    cfg = replace(cfg, threads=args.threads, workers=args.workers,
                  **({"seeds": seeds} if seeds else {}), **({"out_dir": args.out} if args.out else {}))
    check_writable(cfg.out_dir, "--out", directory=True)
    if args.asset:
        check_writable(args.asset, "--asset", directory=False)
    results = run_comparison(cfg, progress=not args.quiet)
    args.compared = cfg.out_dir  # what an interrupt from here on leaves: the run in --out, the asset as it was
    if args.asset:
        from dpo_teach.frontier import write_asset

        write_asset(results, args.asset)
        print(f"wrote {args.asset}")


def _one_line_warnings(command: str, category: type[Warning] | tuple[type[Warning], ...]) -> None:
    """Show warnings about the user's input or cache (``category``) as one line each, like the errors: no source
    line."""
    show = warnings.showwarning

    def showwarning(message, cls, filename, lineno, file=None, line=None):
        if issubclass(cls, category):
            print(f"dpo-teach {command}: warning: {message}", file=file or sys.stderr)
        else:
            show(message, cls, filename, lineno, file, line)

    warnings.showwarning = showwarning  # restored by the caller's warnings.catch_warnings()


def _escape_what_the_console_cannot_show() -> None:
    """π, β and ≥ as escapes (``\\u03c0``) where standard output or error cannot encode them (Windows sends a pipe or
    a file its ANSI code page, cp1252), instead of a UnicodeEncodeError after the whole run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "π".encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _escape_what_the_console_cannot_show()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""  # `dpo-teach --help`: no command's arguments
    try:
        args = build_parser(command).parse_args(argv)  # demo, data, train: torch and transformers (their defaults)
    except KeyboardInterrupt:  # each command answers its own
        print("interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return _run(args)


def _run(args) -> int:
    if args.command == "grade":  # its own errors and exit codes (grading runs notebooks, trains no model)
        return cmd_grade(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "MPLBACKEND" not in os.environ:  # the commands write figures to files: never open a window. (Set in this
        import matplotlib  # process only, not in os.environ, which notebook kernels started later would inherit.)

        matplotlib.use("Agg")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from dpo_teach.model import CheckpointError, ContextLengthError, InstallError
    from dpo_teach.preference_file import DataError, DataWarning
    from dpo_teach.training import TrainingError
    from dpo_teach.world import CacheError, CacheWarning

    try:
        with warnings.catch_warnings():
            _one_line_warnings(args.command, (DataWarning, CacheWarning, SettingWarning))
            {"demo": cmd_demo, "data": cmd_data, "train": cmd_train, "compare": cmd_compare}[args.command](args)
    except (DataError, CheckpointError, ContextLengthError, InstallError, UsageError, TrainingError, CacheError) as e:
        print(f"dpo-teach {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {_interrupted(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `data --out - | head`: the reader has what it wanted
        _stdout_to_devnull()
        return 0
    except OSError as e:  # a full disk or quota, a folder gone while the run wrote: what is kept, in one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"dpo-teach {args.command}: error: {e.strerror or e}{where}; {_interrupted(args)}", file=sys.stderr)
        return 2
    return 0


def _interrupted(args) -> str:
    """What an interrupted or failed command leaves: each writes its outputs only at its end (atomically)."""
    if args.command in ("demo", "train"):
        return f"--out {args.out} is as it was before this run"
    if args.command == "compare" and getattr(args, "compared", None):
        return f"this run's results are in {args.compared}; --asset {args.asset} is as it was before"
    if args.command == "compare":
        return ("a comparison writes results.json, table.md and frontier.png only at its end, so none of this run's "
                "results were kept and --out is as it was before; rerunning starts over")
    return "nothing was written" + ("" if args.out == "-" else f" to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
