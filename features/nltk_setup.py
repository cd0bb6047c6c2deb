"""Where the NLTK data of the concept pipeline comes from, and which tools it uses. WordNet is
required: offline, `scripts/install_nltk_data.sh DIR` installs Debian's WordNet 3.0 as NLTK data,
found through NLTK_DATA, NLTK's default paths or the project's `.nltk_data/`."""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader

PROJECT_DATA = Path(__file__).resolve().parents[1] / ".nltk_data"
INSTALL_SCRIPT = "scripts/install_nltk_data.sh"
PERCEPTRON = "taggers/averaged_perceptron_tagger_eng/"


class NltkDataMissing(RuntimeError):
    """WordNet (or another required NLTK resource) is not installed; the message says how."""


def _add_data_paths() -> None:
    # nltk reads NLTK_DATA only when first imported; a later setting (tests, the CLI) and the
    # project's own folder are added here so the order of imports does not matter
    for folder in (os.environ.get("NLTK_DATA", "").split(os.pathsep) + [str(PROJECT_DATA)]):
        if folder and folder not in nltk.data.path and Path(folder).is_dir():
            nltk.data.path.append(folder)


class _EnglishWordNet(WordNetCorpusReader):
    """NLTK's WordNet reader without the Open Multilingual WordNet mapping it builds on load
    (reading index.sense twice: 60% of a 7 s load here), which lemmatisation never uses."""

    def map_wn(self, version="wordnet"):
        return None


@lru_cache(maxsize=1)
def wordnet() -> WordNetCorpusReader:
    """The WordNet corpus reader, loaded; raises NltkDataMissing naming the install script."""
    _add_data_paths()
    try:
        with warnings.catch_warnings():  # "multilingual functions are not available"
            warnings.simplefilter("ignore", UserWarning)
            return _EnglishWordNet(nltk.data.find("corpora/wordnet"), None)
    except (LookupError, OSError) as e:
        raise NltkDataMissing(
            "NLTK's WordNet data is not installed (needed to lemmatise concepts). Offline: run "
            f"`{INSTALL_SCRIPT} {PROJECT_DATA}` (or any DIR, then export NLTK_DATA=DIR); online: "
            "python -m nltk.downloader wordnet. NLTK searched: " + ", ".join(nltk.data.path)
        ) from e


def has_perceptron_tagger() -> bool:
    """Whether NLTK's averaged perceptron data is installed (online:
    `nltk.download("averaged_perceptron_tagger_eng")`); without it POS tags come from TextBlob's
    bundled Pattern tagger, which works offline. The choice changes the tuples, so it is part of
    nlp_record()."""
    _add_data_paths()
    try:
        nltk.data.find(PERCEPTRON)
        return True
    except LookupError:
        return False


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def nlp_record() -> dict:
    """The tokenizer, tagger and lemmatiser (with data versions) the pipeline runs with: recorded
    in every vocabulary build and hashed into its id."""
    wn = wordnet()
    tagger = ({"tagger": "nltk.averaged_perceptron_tagger_eng"} if has_perceptron_tagger()
              else {"tagger": "textblob.PatternTagger",
                    "textblob": _package_version("textblob")})
    return {"tokenizer": "nltk.NLTKWordTokenizer", **tagger,
            "lemmatizer": "wordnet.morphy", "wordnet": wn.get_version(),
            "nltk": nltk.__version__}
