"""Train and ship the tiny reference model used by the tests and example suites.

    python tools/build_tiny_model.py --out models/tiny-ref --data example_suites/tiny/data
    python tools/build_tiny_model.py --out models/tiny-ref --data example_suites/tiny/data \\
        --eval-only

What it does, in order:

1. Writes the eval sets ``{data}/{slice}.jsonl`` (60 cases per slice, drawn
   with ``--seed + 1000`` so they do not share a stream with training).
2. Builds a byte-level tokenizer with ``tokenizers`` (256 byte tokens, no
   merges, so every digit is its own token, plus ``<bos>``/``<eos>``/``<pad>``).
3. Trains a small Llama on the CPU on a mixture of the task families of
   ``tools/tiny_tasks.py``, loss on the answer tokens only.  Training prompts
   that collide with an eval prompt are rejected, so the eval sets are
   disjoint from training by construction (and this is asserted).
4. Saves the checkpoint with ``save_pretrained(safe_serialization=True)``.
5. Reloads it through ``AutoModelForCausalLM.from_pretrained`` (no missing or
   unexpected keys allowed) and prints per-slice accuracy of the reference,
   of bitsandbytes NF4 and of round-to-nearest fake quantization at several
   bit widths and group sizes, plus teacher-forced top-1 agreement with the
   reference.

Everything runs offline with fixed seeds on one CPU thread (about 5.5 minutes).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Nothing here may touch the network; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

import tiny_tasks  # noqa: E402  (needs the sys.path entry above)
from tiny_build import build_model, build_tokenizer, load, save, seed_everything  # noqa: E402
from tiny_tasks import MAX_NEW_TOKENS, SLICES, Example  # noqa: E402

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pytest_quantgate.backends.hf import HFBackend

EVAL_PER_SLICE = 60
# Training mixture: harder slices get more of the batch.  ``format`` answers
# are long (many supervised tokens per example) so it needs few examples.
MIXTURE: dict[str, float] = {"recall": 2.0, "retention": 0.5, "arith": 2.0, "format": 0.7}
# RTN variants reported by the evaluation table: (bits, group_size).
RTN_VARIANTS: tuple[tuple[int, int], ...] = tuple(
    (bits, group) for bits in (2, 3, 4) for group in (32, 64, 128)
)


@dataclass(frozen=True)
class Arch:
    """Model size knobs (defaults are the shipped model)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 128


# --------------------------------------------------------------------------
# Setup.
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


def encode_training_batch(
    tokenizer: PreTrainedTokenizerBase, batch: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (-100 outside the answers).

    The sequence is ``<bos> prompt answer \\n <eos>``; the answer, the newline
    and EOS are supervised, so the model learns to stop by itself.
    """
    import torch

    backend = tokenizer.backend_tokenizer
    prompts = backend.encode_batch([ex.prompt for ex in batch])  # with <bos>
    answers = backend.encode_batch([ex.expected + tiny_tasks.STOP for ex in batch], add_special_tokens=False)
    rows = []
    for p, a in zip(prompts, answers, strict=True):
        rows.append((p.ids, [*a.ids, tokenizer.eos_token_id]))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    return ids, labels


def batches(stream: Iterator[Example], size: int, seed: int, pool: int = 8) -> Iterator[list[Example]]:
    """Batches of similar length: draw ``pool`` batches, sort, split, shuffle.

    The slices differ a lot in length (arith ~12 tokens, format ~55), and
    padding everything to the longest in a mixed batch wasted about half of
    the compute on a CPU that only has minutes.
    """
    rng = random.Random(seed)
    while True:
        drawn = sorted((next(stream) for _ in range(size * pool)), key=_length)
        chunks = [drawn[i : i + size] for i in range(0, len(drawn), size)]
        rng.shuffle(chunks)
        yield from chunks


def _length(ex: Example) -> int:
    return len(ex.prompt) + len(ex.expected)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_sets: dict[str, list[Example]],
    log_every: int,
) -> None:
    import torch
    import torch.nn.functional as F

    banned = {ex.prompt for exs in eval_sets.values() for ex in exs}
    stream = tiny_tasks.stream(MIXTURE, seed, exclude=banned)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, steps // 50)

    def schedule(step: int) -> float:
        # Linear warm-up, then cosine down to 5% of the peak.
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    t0 = time.perf_counter()
    seen: set[str] = set()
    running = 0.0
    for step, batch in enumerate(batches(stream, batch_size, seed)):
        if step >= steps:
            break
        seen.update(ex.prompt for ex in batch)
        ids, labels = encode_training_batch(tokenizer, batch)
        # No attention mask: padding is on the right, so causal attention
        # never lets a real token see a pad, and pads carry no loss.
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            acc = teacher_forced_accuracy(model, tokenizer, eval_sets)
            model.train()
            elapsed = time.perf_counter() - t0
            print(
                f"step {step + 1:5d}  loss {running / log_every:.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {elapsed:6.1f}s  "
                + "  ".join(f"{s} {a:.3f}" for s, a in acc.items()),
                flush=True,
            )
            running = 0.0
    overlap = seen & banned
    assert not overlap, f"{len(overlap)} eval prompts leaked into training"
    print(f"trained on {len(seen)} distinct prompts; none is an eval prompt")


def teacher_forced_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_sets: dict[str, list[Example]],
) -> dict[str, float]:
    """Exact match under teacher forcing: every answer token is the argmax.

    This equals greedy accuracy (if each next token is the argmax given the
    correct prefix, greedy decoding reproduces the answer and its newline),
    at the cost of one forward pass, so it is cheap enough to log in training.
    """
    import torch

    model.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, exs in eval_sets.items():
            ids, labels = encode_training_batch(tokenizer, exs)
            pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
            gold = labels[:, 1:]
            ok = ((pred == gold) | (gold == -100)).all(dim=1)
            out[name] = ok.float().mean().item()
    return out


# --------------------------------------------------------------------------
# Saving and loading.
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def generate(backend: HFBackend, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Batched greedy generation (left padding), cut at the first newline."""
    from pytest_quantgate.backends.base import GenerationRequest
    from pytest_quantgate.values.prompts import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens, stop=(tiny_tasks.STOP,))
    texts = backend.generate([GenerationRequest(p, settings) for p in prompts])
    return [tiny_tasks.first_line(t) for t in texts]


def slice_outputs(backend: HFBackend, eval_sets: dict[str, list[Example]]) -> dict[str, list[str]]:
    return {
        name: generate(backend, [ex.prompt for ex in exs], MAX_NEW_TOKENS[name])
        for name, exs in eval_sets.items()
    }


def accuracy(eval_sets: dict[str, list[Example]], outputs: dict[str, list[str]]) -> dict[str, float]:
    return {
        name: sum(tiny_tasks.check(name, o, ex.expected) for o, ex in zip(outputs[name], exs, strict=True))
        / len(exs)
        for name, exs in eval_sets.items()
    }


def top1_agreement(
    ref: PreTrainedModel,
    cand: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_sets: dict[str, list[Example]],
    ref_outputs: dict[str, list[str]],
) -> dict[str, float]:
    """Teacher-forced top-1 agreement over the reference's own answer tokens."""
    import torch

    out: dict[str, float] = {}
    with torch.no_grad():
        for name, exs in eval_sets.items():
            as_ref = [
                Example(ex.slice, ex.prompt, o, ex.cluster)
                for ex, o in zip(exs, ref_outputs[name], strict=True)
            ]
            ids, labels = encode_training_batch(tokenizer, as_ref)
            mask = labels[:, 1:] != -100
            a = ref(input_ids=ids).logits[:, :-1].argmax(-1)
            b = cand(input_ids=ids).logits[:, :-1].argmax(-1)
            out[name] = ((a == b) & mask).sum().item() / mask.sum().item()
    return out


def assert_batched_equals_single(
    backend: HFBackend,
    eval_sets: dict[str, list[Example]],
    batched: dict[str, list[str]],
    per_slice: int = 8,
) -> None:
    """Left padding must not change greedy outputs (positions come from the mask)."""
    for name, exs in eval_sets.items():
        for ex, b in list(zip(exs, batched[name], strict=True))[:per_slice]:
            single = generate(backend, [ex.prompt], MAX_NEW_TOKENS[name])[0]
            assert single == b, f"{name}: batched {b!r} != single {single!r} for {ex.prompt!r}"
    print(f"batched == single on {per_slice} cases per slice")


def evaluate(out: Path, eval_sets: dict[str, list[Example]]) -> None:
    t0 = time.perf_counter()
    ref = load(str(out))
    n_params = sum(p.numel() for p in ref.model.parameters())
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"\nloaded {out}: {n_params:,} parameters, dir {size / 1e6:.2f} MB, clean load")

    ref_out = slice_outputs(ref, eval_sets)
    assert_batched_equals_single(ref, eval_sets, ref_out)
    rows: list[tuple[str, dict[str, float], dict[str, float] | None]] = [
        ("reference", accuracy(eval_sets, ref_out), None)
    ]
    specs = ["bnb-nf4"] + [f"rtn{bits}g{group}" for bits, group in RTN_VARIANTS]
    for scheme in specs:
        try:
            cand = load(f"{scheme}:{out}")
        except Exception as exc:  # report and go on: the other rows are still useful
            print(f"{scheme} load failed: {type(exc).__name__}: {exc}")
            continue
        cand_out = slice_outputs(cand, eval_sets)
        agree = top1_agreement(ref.model, cand.model, ref.tokenizer, eval_sets, ref_out)
        rows.append((scheme, accuracy(eval_sets, cand_out), agree))
        cand.close()

    n = {name: len(exs) for name, exs in eval_sets.items()}
    print(f"\naccuracy in % on the eval sets ({', '.join(f'{k} n={v}' for k, v in n.items())});")
    print("in brackets: teacher-forced top-1 agreement with the reference, %")
    print(f"{'model':<12}" + "".join(f"{s:>18}" for s in SLICES))
    for label, acc, agreement in rows:
        cells = []
        for s in SLICES:
            cell = f"{100 * acc[s]:.1f}"
            if agreement is not None:
                cell += f" [{100 * agreement[s]:.1f}]"
            cells.append(f"{cell:>18}")
        print(f"{label:<12}" + "".join(cells))
    print(f"evaluation took {time.perf_counter() - t0:.1f}s")


# --------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------


def make_eval_sets(seed: int) -> dict[str, list[Example]]:
    # A seed offset keeps the eval stream unrelated to the training stream.
    return {name: tiny_tasks.generate(name, EVAL_PER_SLICE, seed + 1000) for name in SLICES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "tiny-ref")
    parser.add_argument("--data", type=Path, default=REPO / "example_suites" / "tiny" / "data")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=Arch.hidden)
    parser.add_argument("--layers", type=int, default=Arch.layers)
    parser.add_argument("--heads", type=int, default=Arch.heads)
    parser.add_argument("--intermediate", type=int, default=Arch.intermediate)
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; the shipped model used 1 (default: 1)"
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="skip training; evaluate the model already in --out on the sets in --data",
    )
    args = parser.parse_args(argv)

    import torch

    # One thread by default: float sums in another order give other weights,
    # and the shipped checkpoint was trained with one.
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    if args.eval_only:
        eval_sets = {name: tiny_tasks.read_jsonl(args.data / f"{name}.jsonl") for name in SLICES}
        evaluate(args.out, eval_sets)
        return 0

    eval_sets = make_eval_sets(args.seed)
    for name, exs in eval_sets.items():
        tiny_tasks.write_jsonl(args.data / f"{name}.jsonl", exs)
    print(f"wrote {sum(map(len, eval_sets.values()))} eval cases to {args.data}")

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(Arch.max_positions)
    arch = Arch(args.hidden, args.layers, args.heads, args.intermediate)
    model = build_model(arch, tokenizer)
    print(f"{arch}: {sum(p.numel() for p in model.parameters()):,} parameters")
    train(
        model,
        tokenizer,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_sets=eval_sets,
        log_every=args.log_every,
    )
    train_s = time.perf_counter() - t0
    save(model, tokenizer, args.out, max(MAX_NEW_TOKENS.values()))
    evaluate(args.out, eval_sets)
    print(f"\ntraining took {train_s:.0f}s ({train_s / 60:.1f} min) on {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
