-- group: preferences
-- key: prompt_id
-- DPO pairs of a round: (winner, loser) answers of battles decided by at least
-- dpo_min_margin, one pair per prompt (the widest margin, preferring pairs where the
-- target's own answer is the rejected one, which is what DPO on the target learns most from).
WITH decided AS (
    SELECT
        o.*,
        row_number() OVER (
            PARTITION BY o.prompt_id
            ORDER BY (o.winner = 'model_b') DESC, o.margin DESC, o.model_b
        ) AS pick
    FROM {{ ref('battle_outcomes') }} AS o
    WHERE o.round = {{ round }}
      AND o.winner <> 'tie'
      AND o.margin >= {{ var('dpo_min_margin') }}
      AND greatest(o.score_a, o.score_b) >= {{ var('dpo_min_winner_score') }}
)
SELECT
    d.round,
    sha256(concat_ws('|', 'dpo', d.round, d.prompt_id, d.battle_id)) AS pair_id,
    d.prompt_id,
    p.prompt,
    chosen.response AS chosen,
    rejected.response AS rejected,
    d.winner_model AS chosen_model,
    d.loser_model AS rejected_model,
    greatest(d.score_a, d.score_b) AS chosen_score,
    least(d.score_a, d.score_b) AS rejected_score,
    d.margin,
    d.model_a AS target_model,
    d.battle_id,
    d.judgment_1_id,
    d.judgment_2_id,
    chosen.response_id AS chosen_response_id,
    rejected.response_id AS rejected_response_id,
    d.judge
FROM decided AS d
JOIN {{ ref('prompt_pool') }} AS p ON p.prompt_id = d.prompt_id
JOIN {{ ref('responses') }} AS chosen
  ON chosen.round = d.round AND chosen.prompt_id = d.prompt_id AND chosen.model = d.winner_model
JOIN {{ ref('responses') }} AS rejected
  ON rejected.round = d.round AND rejected.prompt_id = d.prompt_id AND rejected.model = d.loser_model
WHERE d.pick = 1
