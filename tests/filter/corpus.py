"""The Apache SpamAssassin public corpus for the tests: `pimail.filter.sa_corpus`,
which also builds the starter model from it (issue 15)."""

from pimail.filter.sa_corpus import (  # noqa: F401
    GROUPS,
    HELD_OUT_GROUPS,
    PACKAGE,
    PACKAGE_VERSION,
    TRAIN_GROUPS,
    CorpusError,
    cache_root,
    corpus_dir,
    in_test_part,
    messages,
    split,
)
