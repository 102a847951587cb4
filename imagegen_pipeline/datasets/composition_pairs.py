"""The fixed subjects, accessories and held-out pairs of the composed emoji set ("a cat with a top hat").

Fixed lists, not a random split: a held-out pair must stay held out across imports and machines, so the val
prompts ("a dog with a crown") measure whether the generator composes parts it saw apart but never together.
Every subject and accessory still has many training partners, and the cat keeps every hat (users ask for
"a cat with a hat").
"""

from __future__ import annotations

from dataclasses import dataclass

from imagegen_pipeline.datasets.emoji_captions import distinct

NONE = "none"  # the accessory of a subject alone
KINDS = ("head", "eyes", "neck")


@dataclass(frozen=True)
class Subject:
    word: str  # "cat": the subject in captions
    unified: str  # emoji-datasource `unified` code points of the face emoji
    name: str  # the emoji's name in plain words, for "cat face wearing a top hat"
    article: str = "a"


@dataclass(frozen=True)
class Accessory:
    word: str  # "top hat"
    unified: str
    kind: str  # "head", "eyes" or "neck": where compose() puts it
    article: str = "a"  # "" for plurals ("sunglasses")


SUBJECTS: dict[str, Subject] = {s.word: s for s in (
    Subject("cat", "1F431", "cat face"), Subject("dog", "1F436", "dog face"),
    Subject("mouse", "1F42D", "mouse face"), Subject("rabbit", "1F430", "rabbit face"),
    Subject("bear", "1F43B", "bear face"), Subject("panda", "1F43C", "panda face"),
    Subject("tiger", "1F42F", "tiger face"), Subject("lion", "1F981", "lion face"),
    Subject("cow", "1F42E", "cow face"), Subject("pig", "1F437", "pig face"),
    Subject("frog", "1F438", "frog face"), Subject("monkey", "1F435", "monkey face"),
    Subject("fox", "1F98A", "fox face"), Subject("wolf", "1F43A", "wolf face"),
    Subject("koala", "1F428", "koala"), Subject("hamster", "1F439", "hamster face"),
    Subject("unicorn", "1F984", "unicorn face"), Subject("horse", "1F434", "horse face"),
    Subject("robot", "1F916", "robot face"), Subject("alien", "1F47D", "extraterrestrial alien", "an"),
    Subject("ghost", "1F47B", "ghost"), Subject("skull", "1F480", "skull"),
    Subject("smiley", "1F600", "grinning face"), Subject("clown", "1F921", "clown face"),
)}

ACCESSORIES: dict[str, Accessory] = {a.word: a for a in (
    Accessory("top hat", "1F3A9", "head"), Accessory("woman's hat", "1F452", "head"),
    Accessory("billed cap", "1F9E2", "head"), Accessory("graduation cap", "1F393", "head"),
    Accessory("crown", "1F451", "head"), Accessory("rescue helmet", "26D1-FE0F", "head"),
    Accessory("sunglasses", "1F576-FE0F", "eyes", ""), Accessory("glasses", "1F453", "eyes", ""),
    Accessory("goggles", "1F97D", "eyes", ""),
    Accessory("ribbon", "1F380", "neck"), Accessory("necktie", "1F454", "neck"), Accessory("scarf", "1F9E3", "neck"),
)}

# 48 of the 24 x 12 = 288 pairs (16.7%): two per subject, four per accessory, so each subject keeps 10 training
# accessories and each accessory 20 training subjects.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("cat", "goggles"), ("cat", "scarf"),
    ("dog", "crown"), ("dog", "necktie"),
    ("mouse", "top hat"), ("mouse", "sunglasses"),
    ("rabbit", "top hat"), ("rabbit", "ribbon"),
    ("bear", "billed cap"), ("bear", "scarf"),
    ("panda", "graduation cap"), ("panda", "glasses"),
    ("tiger", "rescue helmet"), ("tiger", "sunglasses"),
    ("lion", "woman's hat"), ("lion", "necktie"),
    ("cow", "billed cap"), ("cow", "ribbon"),
    ("pig", "top hat"), ("pig", "glasses"),
    ("frog", "crown"), ("frog", "sunglasses"),
    ("monkey", "rescue helmet"), ("monkey", "goggles"),
    ("fox", "woman's hat"), ("fox", "scarf"),
    ("wolf", "graduation cap"), ("wolf", "necktie"),
    ("koala", "crown"), ("koala", "glasses"),
    ("hamster", "rescue helmet"), ("hamster", "ribbon"),
    ("unicorn", "woman's hat"), ("unicorn", "goggles"),
    ("horse", "billed cap"), ("horse", "sunglasses"),
    ("robot", "graduation cap"), ("robot", "ribbon"),
    ("alien", "billed cap"), ("alien", "necktie"),
    ("ghost", "rescue helmet"), ("ghost", "goggles"),
    ("skull", "top hat"), ("skull", "graduation cap"),
    ("smiley", "woman's hat"), ("smiley", "glasses"),
    ("clown", "crown"), ("clown", "scarf"),
)
_HELD_OUT = frozenset(HELD_OUT_PAIRS)


def is_held_out(subject: str, accessory: str) -> bool:
    return (subject, accessory) in _HELD_OUT


def _with_article(article: str, word: str) -> str:
    return f"{article} {word}" if article else word


def captions_for_pair(subject: str, accessory: str) -> list[str]:
    """Template captions of one picture, the canonical one first ("a cat with a top hat"); every head item is
    also "a hat", so "a cat with a hat" reaches crowns and helmets too."""
    s = SUBJECTS[subject]
    a_subject = _with_article(s.article, s.word)
    if accessory == NONE:
        return distinct([a_subject, s.name])
    acc = ACCESSORIES[accessory]
    a_acc = _with_article(acc.article, acc.word)
    out = [f"{a_subject} with {a_acc}", f"{s.name} wearing {a_acc}", f"{a_acc} on {a_subject}"]
    if acc.kind == "head":
        out += [f"{a_subject} in a hat", f"{a_subject} with a hat", f"{a_subject} wearing a hat"]
    else:
        out += [f"{a_subject} wearing {a_acc}"]
    return distinct(out)


def held_out_prompts() -> list[tuple[str, str, str]]:
    """(canonical caption, subject, accessory) of every held-out pair: the val prompts of composition."""
    return [(captions_for_pair(s, a)[0], s, a) for s, a in HELD_OUT_PAIRS]
