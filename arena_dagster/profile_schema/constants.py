"""Names and values that a profile's settings choose among, and that the domain code reads.

The schema knows no domain module: where a setting's allowed values belong to a domain step
(the prompt sources, a recorded judge's verdict scale, the judge-health limits a profile may
move), they are defined here and the domain module imports them.
"""

from __future__ import annotations

# prompts.source
SKILLS_SOURCE = "skills"
REAL_SOURCES = ("sharegpt", "files")
JUDGMENTS_SOURCE = "judgments"  # a replay of judgments recorded elsewhere (prompts/recorded.py)

# judge kind recorded (judging/recorded.py): the file formats and each verdict's score pair.
RECORDED_FORMATS = ("arena-hard", "mt-bench-pair")
VERDICT_SCORES = {"A>>B": (9, 3), "A>B": (7, 5), "A=B": (5, 5), "B>A": (5, 7), "B>>A": (3, 9)}

# judge_health.{block,warn}: the columns whose limits a profile may move. The limits themselves
# are the checks of assets/expectations/sft_judge_health.yaml (quality.suites.judge_health_limits;
# a test holds the two together).
JUDGE_HEALTH_LIMITS = {
    "block": ("parse_failure_rate", "flip_rate", "first_position_win_rate"),
    "warn": ("flip_rate", "first_position_win_rate", "longer_answer_win_rate", "tie_rate"),
}


# The line an LLM judge's retry appends to its prompt (judge.retry_suffix).
DEFAULT_RETRY_SUFFIX = "\n\n(Attempt {attempt}: your last reply could not be read. Reply with the JSON object only.)"
