"""Build the demo model's training corpus from Debian packages.

Fetches the packages with `apt-get download`, unpacks them with `dpkg-deb -x`
and extracts plain English text:

* Jane Austen's six novels (r-cran-janeaustenr, stored as R data),
* the King James Bible (bible-kjv-text + the `bible` reader in bible-kjv),
* optionally the `fortunes` collection (off by default: many entries quote
  copyrighted works, so its licence is less clear-cut than the others').

Each Austen chapter and each Bible chapter is one document. Documents are
split deterministically into train and validation sets and written as
`train.txt` / `val.txt`, documents joined by `<|endoftext|>`. Licences are
copied from each package's copyright file into `licenses.json`.

Usage: python training/build_corpus.py [--cache training/.cache] [--with-fortunes]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import warnings
import zlib
from pathlib import Path

EOT = "<|endoftext|>"
PACKAGES = ["r-cran-janeaustenr", "bible-kjv-text", "bible-kjv"]
FORTUNE_PACKAGES = ["fortunes"]
# Every VAL_EVERY-th document goes to validation (deterministic, spread over all books).
VAL_EVERY = 20


def fetch_and_unpack(packages: list[str], cache: Path) -> dict[str, Path]:
    """Download each package's .deb (once) and unpack it into its own folder."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    roots = {}
    for pkg in packages:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        root = cache / "unpacked" / pkg
        if not root.exists():
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        roots[pkg] = root
    return roots


def unwrap_paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs (blank lines separate them)."""
    paragraphs, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


# ----------------------------------------------------------------- Austen
def read_r_lazyload(data_dir: Path) -> dict[str, list[str]]:
    """Read the character vectors of an R lazy-load database (Rdata.rdx/.rdb).

    The .rdx index is a gzip-compressed R serialization mapping each variable
    to (offset, length) in the .rdb; each .rdb record is a 4-byte big-endian
    length followed by a zlib stream holding that variable's serialization.
    """
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that the stream has no RDS header
        index = rdata.conversion.convert(
            rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
        )
        blob = (data_dir / "Rdata.rdb").read_bytes()
        out = {}
        for name, (offset, length) in index["variables"].items():
            record = blob[offset : offset + length]
            payload = zlib.decompress(record[4:])
            values = rdata.conversion.convert(rdata.parser.parse_data(payload))
            out[str(name)] = [str(v) for v in values]
    return out


CHAPTER_RE = re.compile(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?$")


def austen_documents(root: Path) -> list[str]:
    """One document per chapter; the front matter before chapter 1 is dropped."""
    data_dir = root / "usr/lib/R/site-library/janeaustenr/data"
    docs = []
    for name, lines in sorted(read_r_lazyload(data_dir).items()):
        chapters, current = [], None
        for line in lines:
            if CHAPTER_RE.match(line.strip()):
                if current is not None:
                    chapters.append(current)
                current = []
            elif current is not None:
                current.append(line)
        if current:
            chapters.append(current)
        for chapter in chapters:
            # Drop "VOLUME II"-style headings that sit between chapters.
            paras = [p for p in unwrap_paragraphs(chapter) if not re.fullmatch(r"(VOLUME|END OF).*", p)]
            if paras:
                docs.append("\n".join(paras))
        print(f"  austen/{name}: {len(chapters)} chapters")
    return docs


# ----------------------------------------------------------------- Bible
VERSE_RE = re.compile(r"^\s+\d+\s+(.*)$")


def bible_documents(reader_root: Path, text_root: Path) -> list[str]:
    """One document per chapter: the heading ("Genesis 1") then one verse per line."""
    out = subprocess.run(
        [str(reader_root / "usr/bin/bible"), "-l100000", "-p", str(text_root / "usr/lib"), "Gen1:1-Rev22:21"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs, heading, verses = [], None, []
    for line in out.splitlines():
        match = VERSE_RE.match(line)
        if match:
            verses.append(match.group(1).strip())  # verse number stripped
        elif line.strip():
            if heading and verses:
                docs.append(heading + "\n" + "\n".join(verses))
            heading, verses = line.strip(), []
    if heading and verses:
        docs.append(heading + "\n" + "\n".join(verses))
    print(f"  bible: {len(docs)} chapters")
    return docs


# ----------------------------------------------------------------- fortunes
def fortune_documents(root: Path) -> list[str]:
    """Each `%`-separated fortune is a document; ASCII art is skipped."""
    docs = []
    for path in sorted((root / "usr/share/games/fortunes").iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or path.name == "ascii-art":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.extend(entry.strip("\n") for entry in text.split("\n%\n") if entry.strip())
    print(f"  fortunes: {len(docs)} entries")
    return docs


# ----------------------------------------------------------------- output
def copyright_text(root: Path, pkg: str) -> str:
    return (root / f"usr/share/doc/{pkg}/copyright").read_text(errors="replace")


LICENSE_SUMMARY = {
    "r-cran-janeaustenr": "Novels: public domain (Project Gutenberg texts). Package: MIT, (c) 2016-2017 Julia Silge.",
    "bible-kjv-text": "King James Version text: public domain (copyright expired). Bible Retrieval System data: unrestricted use.",
    "bible-kjv": "Used only to read the text (the `bible` reader); GPL-2+, not redistributed.",
    "fortunes": "fortune-mod collection, BSD licence for the package; individual quotations vary.",
}


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    val = [d for i, d in enumerate(docs) if i % VAL_EVERY == VAL_EVERY // 2]
    train = [d for i, d in enumerate(docs) if i % VAL_EVERY != VAL_EVERY // 2]
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument("--with-fortunes", action="store_true")
    args = parser.parse_args()

    packages = PACKAGES + (FORTUNE_PACKAGES if args.with_fortunes else [])
    roots = fetch_and_unpack(packages, args.cache)

    docs = austen_documents(roots["r-cran-janeaustenr"])
    docs += bible_documents(roots["bible-kjv"], roots["bible-kjv-text"])
    if args.with_fortunes:
        docs += fortune_documents(roots["fortunes"])

    train, val = split_documents(docs)
    corpus = args.cache / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "train.txt").write_text(EOT.join(train), encoding="utf-8")
    (corpus / "val.txt").write_text(EOT.join(val), encoding="utf-8")

    licenses = {
        pkg: {"summary": LICENSE_SUMMARY[pkg], "copyright_file": copyright_text(root, pkg)}
        for pkg, root in roots.items()
    }
    (corpus / "licenses.json").write_text(json.dumps(licenses, indent=1))
    n_train, n_val = sum(map(len, train)), sum(map(len, val))
    print(f"train: {len(train)} docs, {n_train:,} chars; val: {len(val)} docs, {n_val:,} chars -> {corpus}")


if __name__ == "__main__":
    main()
