"""A run none of whose completions the pattern classifier's vocabulary matched is flagged: every rollout was labelled
non-RS for want of a known word, not on evidence (issue 21: an environment family whose completions never say
`think grader`)."""

import pytest

from physrl.organisms import OrganismConfig, PatternClassifier, read_manifest, read_rollouts, train
from physrl.organisms._classify import JudgeClassifier, unmatched_vocabulary


def test_matches_vocabulary_reads_the_reasoning_span_only():
    clf = PatternClassifier(["grader"], ["rule"])
    texts = ["think grader note 1 ans 2", "think rule ans 3", "think hmm ans grader", "ans rule", "grader rule"]
    assert clf.matches_vocabulary(texts) == [True, True, False, False, False]
    assert unmatched_vocabulary(clf, texts) is None
    msg = unmatched_vocabulary(clf, texts[2:])
    assert msg.startswith("none of the run's 3 completions matched the 'pattern' classifier's vocabulary")
    assert "grader, rule" in msg and "docs/environments.md" in msg
    assert unmatched_vocabulary(clf, []) is None                       # nothing to judge
    judge = JudgeClassifier(lambda p, c: [0.0] * len(c), "zero")
    assert unmatched_vocabulary(judge, texts[2:]) is None              # a judge has no vocabulary


def test_a_run_whose_words_the_classifier_never_saw_warns_and_says_so_in_the_manifest(tmp_path):
    config = OrganismConfig(n_envs=1, n_heldout=0, max_steps=2, eval_every=2, checkpoint_every=2, pretrain_steps=60,
                            groups_per_step=2, num_generations=4, eval_prompts_per_env=1, progress=False,
                            stage1_cache="off", rs_patterns=["zzz"], local_patterns=["yyy"])
    with pytest.warns(RuntimeWarning, match=r"none of the run's \d+ completions matched .* zzz, yyy"):
        run = train(config, tmp_path / "run")
    rows = read_rollouts(run)
    assert len(rows) > 0 and not rows.rs.any()                         # every rollout labelled non-RS
    note = read_manifest(run).organisms["classifier_warning"]
    assert note.startswith(f"none of the run's {len(rows)} completions")
    # the same completions with the digit-map family's own words: matched, so no warning
    default = OrganismConfig()
    assert unmatched_vocabulary(PatternClassifier(default.rs_patterns, default.local_patterns),
                                rows.completion.tolist()) is None
