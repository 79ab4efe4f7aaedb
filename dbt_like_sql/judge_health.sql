-- group: stage
-- key: judge
-- stages: sft, dpo, rl
-- Judge health of a round's training battles, per judge: parse failures, two-game flips,
-- first-position wins, longer-answer wins and ties. Checks on it gate the stage's training.
-- column judge: the judge
-- column parse_failure_rate: share of games whose judge output did not parse
-- column incomplete_battles: battles left out of the outcomes because a game still did not parse after the judge's retries (never a win, loss or tie)
-- column flip_rate: share of battles whose two games disagree
-- column tie_rate: share of battles called a tie
-- column first_position_win_rate: share of decided games won by the answer shown first (0.5 = no position bias)
-- column longer_answer_win_rate: share of decided games won by the longer answer (0.5 = no length bias)
-- column member_agreement: a judge ensemble: share of games on which all its members give the same verdict (NULL for a single judge)
-- column member_position_consistency: a judge ensemble: the lowest of its members' position consistency, the share of battles whose two games a member decided alike (NULL for a single judge)
-- column member_consistency: a judge ensemble: each member's position consistency, as text
{% import 'macros/judge_health.sql' as health with context %}
{{ health.judge_health(stage_ref('judgments'), stage_ref('responses'), stage_ref('battle_outcomes')) }}
