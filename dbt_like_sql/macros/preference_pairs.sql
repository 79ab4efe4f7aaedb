{#- (chosen, rejected) rows from decided battles `d` (a CTE of battle outcomes), with every
    lineage column: the prompt and its conversation, both responses, both judgments. -#}
{% macro preference_pairs(kind, decided, responses, prompt_pool) -%}
SELECT
    d.round,
    sha256(concat_ws('|', '{{ kind }}', d.round, d.prompt_id, d.battle_id)) AS pair_id,
    d.prompt_id,
    p.prompt,
    p.messages,
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
FROM {{ decided }} AS d
JOIN {{ prompt_pool }} AS p ON p.prompt_id = d.prompt_id
JOIN {{ responses }} AS chosen
  ON chosen.round = d.round AND chosen.prompt_id = d.prompt_id AND chosen.model = d.winner_model
JOIN {{ responses }} AS rejected
  ON rejected.round = d.round AND rejected.prompt_id = d.prompt_id AND rejected.model = d.loser_model
{%- endmacro %}
