{#- The paper's two-game setup: each battle is judged once in each order (game 1 shows
    model_x as A, game 2 shows model_y as A). A battle counts only when both games parsed;
    per-model scores are averaged over the games, and averages closer than tie_margin tie.
    A battle with a game that still did not parse after the judge's retries is incomplete: it
    is left out here, so it is never a win, loss or tie for either side (nor training data),
    and judge health counts it (incomplete_battles). -#}
{% macro two_game(judgments, tie_margin) -%}
WITH games AS (
    SELECT
        round, battle_id, prompt_id, model_x, model_y, game, judge, judgment_id,
        CASE WHEN model_a = model_x THEN score_a ELSE score_b END AS x_score,
        CASE WHEN model_a = model_x THEN score_b ELSE score_a END AS y_score,
        CASE WHEN model_a = model_x THEN response_a_id ELSE response_b_id END AS x_response_id,
        CASE WHEN model_a = model_x THEN response_b_id ELSE response_a_id END AS y_response_id
    FROM {{ judgments }}
    WHERE round = {{ round }} AND parse_ok
),
paired AS (
    SELECT
        g1.round, g1.battle_id, g1.prompt_id, g1.judge,
        g1.model_x, g1.model_y, g1.x_response_id, g1.y_response_id,
        g1.judgment_id AS judgment_1_id, g2.judgment_id AS judgment_2_id,
        g1.x_score AS x_score_1, g2.x_score AS x_score_2,
        g1.y_score AS y_score_1, g2.y_score AS y_score_2,
        (g1.x_score + g2.x_score) / 2.0 AS x_score,
        (g1.y_score + g2.y_score) / 2.0 AS y_score
    FROM games AS g1
    JOIN games AS g2 ON g1.battle_id = g2.battle_id AND g1.game = 1 AND g2.game = 2
)
SELECT
    round, battle_id, prompt_id, judge,
    model_x AS model_a, model_y AS model_b,
    x_response_id AS response_a_id, y_response_id AS response_b_id,
    judgment_1_id, judgment_2_id,
    x_score_1 AS score_a_game_1, x_score_2 AS score_a_game_2,
    y_score_1 AS score_b_game_1, y_score_2 AS score_b_game_2,
    x_score AS score_a, y_score AS score_b,
    CASE
        WHEN abs(x_score - y_score) < {{ tie_margin }} THEN 'tie'
        WHEN x_score > y_score THEN 'model_a'
        ELSE 'model_b'
    END AS winner,
    CASE
        WHEN abs(x_score - y_score) < {{ tie_margin }} THEN NULL
        WHEN x_score > y_score THEN model_x ELSE model_y
    END AS winner_model,
    CASE
        WHEN abs(x_score - y_score) < {{ tie_margin }} THEN NULL
        WHEN x_score > y_score THEN model_y ELSE model_x
    END AS loser_model,
    abs(x_score - y_score) AS margin,
    sign(x_score_1 - y_score_1) <> sign(x_score_2 - y_score_2) AS inconsistent
FROM paired
{%- endmacro %}
