-- group: dpo
-- key: prompt_id
-- DPO pairs of a round (battles of the dpo slice, SFT checkpoint as target): (winner, loser)
-- answers of battles decided by at least dpo_min_margin, one pair per prompt (the widest
-- margin, preferring pairs where the target's own answer is the rejected one, which is what
-- DPO on the target learns most from).
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
    SELECT
        o.*,
        row_number() OVER (
            PARTITION BY o.prompt_id
            ORDER BY (o.winner = 'model_b') DESC, o.margin DESC, o.model_b
        ) AS pick
    FROM {{ ref('dpo_battle_outcomes') }} AS o
    WHERE o.round = {{ round }}
      AND o.winner <> 'tie'
      AND o.margin >= {{ var('dpo_min_margin') }}
      AND greatest(o.score_a, o.score_b) >= {{ var('dpo_min_winner_score') }}
)
{{ pairs.preference_pairs('dpo', 'decided', ref('dpo_responses'), ref('prompt_pool')) }}
WHERE d.pick = 1
