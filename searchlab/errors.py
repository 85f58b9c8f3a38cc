"""One exception family, so the CLI turns every expected failure into a one-line message.

Each error names its culprit (a study-file field path, a storage URL with the password hidden, a
back-end class) in its message; nothing else is needed to act on it.
"""

from __future__ import annotations


class SearchlabError(Exception):
    """Base class of every error that searchlab reports as a one-line message."""


class StudyFileError(SearchlabError):
    """A study file is malformed: bad YAML, an unknown key, a wrong type, an impossible bound."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class StorageError(SearchlabError):
    """The study storage cannot be reached, or holds no study of that name."""


class BackendError(SearchlabError):
    """A back end cannot be loaded or returned something searchlab cannot use."""


class RecipeError(SearchlabError):
    """A recipe is not in the study's search space (a missing or unknown key, a value out of
    bounds); the message names the key and its bound."""


class StudyStateError(SearchlabError):
    """The stored study is in a state the command cannot act on (already finished, say)."""


class StudyHeldError(StudyStateError):
    """Another live process runs the study's engine (it holds the study lease)."""


class CandidateFinishedError(StudyStateError):
    """A candidate was finished by another process (a worker's lease ran out, say)."""
