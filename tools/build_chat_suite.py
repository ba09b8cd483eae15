"""Write the data of ``example_suites/chat`` (seeded; the same bytes on every run).

    python tools/build_chat_suite.py

The suite gates a real 135 M chat model (SmolLM2-135M-Instruct, fetched by
``tools/fetch_real_model.py``), so its tasks are ones such a model does
reliably -- copying a value given in the prompt -- checked by code:

- ``extract``: a customer message holds a ticket number; the user asks for
  it (a string prompt: the plugin wraps it in the model's chat template).
- ``lookup``: where a named person lives, stated in the same message (a
  chat-message prompt, one user turn).
- ``recall``: a conversation of three user turns, each followed by the
  model's own reply: a ticket number (or where someone lives) to answer
  with, a turn about something else, then the first question again. The
  messages carry the conversation (a ``Trajectory``); the final reply is
  checked.

It also writes ``calibration/generic.jsonl`` and ``calibration/chat.jsonl``:
calibration texts for ``gptq:`` candidates, short generic sentences against
long multi-turn conversations shaped like the suite's cases (other values:
six-digit numbers; the same phrasing, so ``--quant-calibration`` finds 124
of the 240 cases sharing an 8-word run with them and says so).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "example_suites" / "chat"
SEED = 18
CASES_PER_SLICE = 80

NAMES = [
    "Alice",
    "Bob",
    "Carmen",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Yara",
    "Zoe",
]
CITIES = [
    "Paris",
    "Tokyo",
    "Lima",
    "Oslo",
    "Cairo",
    "Madrid",
    "Denver",
    "Sydney",
    "Berlin",
    "Toronto",
    "Dublin",
    "Nairobi",
    "Lisbon",
    "Seoul",
    "Boston",
    "Vienna",
    "Prague",
    "Chicago",
    "Mumbai",
    "Rome",
]


def case_id(slice_name: str, row: dict) -> str:
    body = json.dumps(row, sort_keys=True)
    return f"{slice_name}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def extract_case(rng: random.Random) -> dict:
    number, name = rng.randint(10000, 99999), rng.choice(NAMES)
    return {"prompt": extract_case_text(name, number), "expected": str(number)}


def extract_case_text(name: str, number: int) -> str:
    return f'Message: "{name} here, my ticket is #{number}, please help."\nWhat is the ticket number?'


def lookup_case(rng: random.Random) -> dict:
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    text = f"{name} lives in {city}. In which city does {name} live? Answer with the city name only."
    return {"messages": [{"role": "user", "content": text}], "expected": city}


def recall_case(rng: random.Random) -> dict:
    """Three user turns: a value to answer with, a turn about something else, the first value again."""
    name, other, city, number = (
        rng.choice(NAMES),
        rng.choice(NAMES),
        rng.choice(CITIES),
        rng.randint(10000, 99999),
    )
    ticket = extract_case_text(name, number)
    lives = f"{other} lives in {city}. In which city does {other} live? Answer with the city name only."
    if rng.random() < 0.5:
        turns = [ticket, lives, "What was the ticket number? Reply with the number only."]
        return {"turns": turns, "expected": str(number)}
    lives = f"{name} lives in {city}. In which city does {name} live? Answer with the city name only."
    turns = [lives, ticket, f"In which city does {name} live? Answer with the city name only."]
    return {"turns": turns, "expected": city}


SLICES = {"extract": extract_case, "lookup": lookup_case, "recall": recall_case}


def slice_rows(name: str, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:{name}")
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < CASES_PER_SLICE:
        row = SLICES[name](rng)
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"id": case_id(name, row), "slice": name, **row})
    return rows


def calibration_texts(seed: int) -> dict[str, list[str]]:
    """Generic short texts, and long multi-turn chat transcripts like the suite's (other values)."""
    rng = random.Random(f"{seed}:calibration")
    subjects = [
        "The weather",
        "The market",
        "The river",
        "The old library",
        "A small cat",
        "The train",
        "Our team",
    ]
    verbs = [
        "changed quickly",
        "was quiet today",
        "opened early",
        "looked bright",
        "moved slowly",
        "stayed calm",
    ]
    generic = [f"{rng.choice(subjects)} {rng.choice(verbs)}." for _ in range(128)]
    chat = []
    for _ in range(128):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        code, ticket = rng.randint(100000, 999999), rng.randint(100000, 999999)
        turns = [
            ("user", f"Remember this code: {code}."),
            ("assistant", f"Sure, I will remember the code {code}."),
            (
                "user",
                f'Message: "{name} here, my ticket is #{ticket}, please help." What is the ticket number?',
            ),
            ("assistant", f"The ticket number is {ticket}."),
            ("user", f"{name} moved to {city}. Where does {name} live now?"),
            ("assistant", f"{name} lives in {city}."),
            ("user", "What was the code?"),
            ("assistant", f"The code is {code}."),
        ]
        chat.append("".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns))
    return {"generic": generic, "chat": chat}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    for name in SLICES:
        write_jsonl(SUITE / "data" / f"{name}.jsonl", slice_rows(name, SEED))
    for name, texts in calibration_texts(SEED).items():
        write_jsonl(SUITE / "calibration" / f"{name}.jsonl", [{"text": t} for t in texts])
    print(f"wrote {SUITE / 'data'} ({len(SLICES)} slices x {CASES_PER_SLICE}) and {SUITE / 'calibration'}")


if __name__ == "__main__":
    main()
