-- group: rl
-- key: pair_id
-- Reward-model pairs of a round (battles of the rl slice, DPO checkpoint as target): every
-- battle decided by at least rm_min_margin becomes a (chosen, rejected) pair, so a prompt
-- yields one pair per decided opponent; the reward model learns the judge's preferences.
-- column pair_id: the pair's id: sha256 of (kind, round, prompt, battle)
-- column prompt_id: the prompt
-- column prompt: the instruction
-- column messages: the conversation up to the instruction (JSON)
-- column chosen: the winner's answer
-- column rejected: the loser's answer
-- column chosen_model: who wrote the chosen answer
-- column rejected_model: who wrote the rejected answer
-- column margin: the judge's score margin between them
-- column battle_id: the battle it came from
-- column judgment_1_id: game 1's judgment
-- column judgment_2_id: game 2's judgment
-- column chosen_response_id: the chosen answer (responses table)
-- column rejected_response_id: the rejected answer
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
