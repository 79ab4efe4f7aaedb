-- group: evaluation
-- key: judge
-- Judge health of a round's arena judgments, per judge: parse failures, two-game flips,
-- first-position wins, longer-answer wins and ties, as each training stage's judge_health;
-- reported, never gating (the arena trains nothing).
-- column round: the flywheel round (0: the baseline evaluation)
-- column judge: the judge
-- column judgments: games judged
-- column parse_failure_rate: share of games whose judge output did not parse (a recorded judge: games without a readable verdict)
-- column battles: battles whose two games both parsed
-- column incomplete_battles: battles left out of the outcomes because a game still did not parse after the judge's retries (never a win, loss or tie)
-- column flip_rate: share of battles whose two games disagree
-- column tie_rate: share of battles called a tie
-- column first_position_win_rate: share of decided games won by the answer shown first (0.5 = no position bias)
-- column longer_answer_win_rate: share of decided games won by the longer answer (0.5 = no length bias; NULL when the answers are unknown)
-- column member_agreement: a judge ensemble: share of games on which all its members give the same verdict (NULL for a single judge)
-- column member_position_consistency: a judge ensemble: the lowest of its members' position consistency, the share of battles whose two games a member decided alike (NULL for a single judge)
-- column member_consistency: a judge ensemble: each member's position consistency, as text
{% import 'macros/judge_health.sql' as health with context %}
{{ health.judge_health(ref('arena_judgments'), ref('arena_responses'), ref('arena_battles')) }}
