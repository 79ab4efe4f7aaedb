-- group: sft
-- key: prompt_id
-- SFT data of a round (battles of the sft slice): prompts the target lost, answered by the
-- best winning competitor, where the winner scored at least sft_min_winner_score and won by
-- at least sft_min_margin.
-- column example_id: the SFT row's id: sha256 of (sft, round, prompt, battle)
-- column prompt_id: the prompt
-- column prompt: the instruction
-- column messages: the conversation up to the instruction (JSON)
-- column response: the winner's answer: what SFT-Ir learns to say
-- column winner_model: the competitor whose answer won
-- column target_model: the model that lost (the round's target)
-- column battle_id: the battle it came from
-- column judgment_1_id: game 1's judgment
-- column judgment_2_id: game 2's judgment
-- column winner_response_id: the winning answer (sft_responses)
-- column target_response_id: the target's losing answer
WITH lost AS (
    SELECT
        o.*,
        row_number() OVER (
            PARTITION BY o.prompt_id ORDER BY o.score_b DESC, o.margin DESC, o.model_b
        ) AS pick
    FROM {{ ref('sft_battle_outcomes') }} AS o
    WHERE o.round = {{ round }}
      AND o.winner = 'model_b'
      AND o.margin >= {{ var('sft_min_margin') }}
      AND o.score_b >= {{ var('sft_min_winner_score') }}
)
SELECT
    l.round,
    sha256(concat_ws('|', 'sft', l.round, l.prompt_id, l.battle_id)) AS example_id,
    l.prompt_id,
    p.prompt,
    p.messages,
    r.response AS response,
    l.model_b AS winner_model,
    l.model_a AS target_model,
    l.score_b AS winner_score,
    l.score_a AS target_score,
    l.margin,
    l.battle_id,
    l.judgment_1_id,
    l.judgment_2_id,
    l.response_b_id AS winner_response_id,
    l.response_a_id AS target_response_id,
    l.judge
FROM lost AS l
JOIN {{ ref('prompt_pool') }} AS p ON p.prompt_id = l.prompt_id
JOIN {{ ref('sft_responses') }} AS r
  ON r.round = l.round AND r.prompt_id = l.prompt_id AND r.model = l.model_b
WHERE l.pick = 1
