-- group: preferences
-- key: pair_id
-- Reward-model pairs of a round (battles of the rl slice, DPO checkpoint as target): every
-- battle decided by at least rm_min_margin becomes a (chosen, rejected) pair, so a prompt
-- yields one pair per decided opponent; the reward model learns the judge's preferences.
{% import 'macros/preference_pairs.sql' as pairs with context %}
WITH decided AS (
    SELECT *
    FROM {{ ref('rl_battle_outcomes') }}
    WHERE round = {{ round }}
      AND winner <> 'tie'
      AND margin >= {{ var('rm_min_margin') }}
)
{{ pairs.preference_pairs('reward', 'decided', ref('rl_responses'), ref('prompt_pool')) }}
WHERE chosen.response <> rejected.response
