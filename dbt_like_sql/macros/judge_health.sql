{#- Judge health of a round's judgments, per judge: parse failures, incomplete battles (a game
    that still did not parse after the judge's retries: two_game.sql leaves the battle out, so
    it is counted here, never silent), two-game flips, ties, first-position wins and
    longer-answer wins. `judgments` (one row per game), `responses`
    (the answers judged) and `battles` (the two games combined) are tables of the same round.
    A model whose answers were not recorded (a replay) has NULL text: the length metric is then
    NULL (unknown), never a guess. -#}
{% macro judge_health(judgments, responses, battles) -%}
WITH judged AS (
    SELECT j.*, ra.response AS text_a, rb.response AS text_b
    FROM {{ judgments }} AS j
    LEFT JOIN {{ responses }} AS ra
      ON ra.round = j.round AND ra.prompt_id = j.prompt_id AND ra.model = j.model_a
    LEFT JOIN {{ responses }} AS rb
      ON rb.round = j.round AND rb.prompt_id = j.prompt_id AND rb.model = j.model_b
    WHERE j.round = {{ round }}
),
decided AS (
    SELECT * FROM judged WHERE parse_ok AND score_a <> score_b
),
battles AS (
    SELECT * FROM {{ battles }} WHERE round = {{ round }}
),
per_judge AS (
    SELECT judge, count(*) AS judgments, avg(CASE WHEN parse_ok THEN 0.0 ELSE 1.0 END) AS parse_failure_rate,
        count(DISTINCT CASE WHEN NOT parse_ok THEN battle_id END) AS incomplete_battles
    FROM judged GROUP BY judge
)
SELECT
    CAST({{ round }} AS BIGINT) AS round,
    p.judge,
    p.judgments,
    p.parse_failure_rate,
    (SELECT count(*) FROM battles AS b WHERE b.judge = p.judge) AS battles,
    p.incomplete_battles,
    (SELECT avg(CASE WHEN b.inconsistent THEN 1.0 ELSE 0.0 END) FROM battles AS b WHERE b.judge = p.judge) AS flip_rate,
    (SELECT avg(CASE WHEN b.winner = 'tie' THEN 1.0 ELSE 0.0 END) FROM battles AS b WHERE b.judge = p.judge) AS tie_rate,
    (SELECT avg(CASE WHEN d.score_a > d.score_b THEN 1.0 ELSE 0.0 END) FROM decided AS d WHERE d.judge = p.judge)
        AS first_position_win_rate,
    (SELECT avg(CASE WHEN (length(d.text_a) > length(d.text_b)) = (d.score_a > d.score_b) THEN 1.0 ELSE 0.0 END)
       FROM decided AS d WHERE d.judge = p.judge AND length(d.text_a) <> length(d.text_b)) AS longer_answer_win_rate
FROM per_judge AS p
{%- endmacro %}
