{#- Judge health of a round's judgments, per judge: parse failures, incomplete battles (a game
    that still did not parse after the judge's retries: two_game.sql leaves the battle out, so
    it is counted here, never silent), two-game flips, ties, first-position wins and
    longer-answer wins; for a judge ensemble (judging/ensemble.py, the members' scores in each
    game's raw JSON) also how often its members agree on a game and each member's position
    consistency. `judgments` (one row per game), `responses`
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
member_games AS (
    -- one row per ensemble member and game: its verdict seen from model_x (1 x won, -1 y won, 0 tie)
    SELECT judge, battle_id, game, judgment_id, m.judge AS member, m.parse_ok AS member_ok,
        sign(m.score_a - m.score_b) * CASE WHEN model_a = model_x THEN 1 ELSE -1 END AS x_verdict
    FROM (
        -- only ensemble games hold JSON raw text: every other game parses as no members
        SELECT *, unnest(from_json(CASE WHEN judge_version LIKE 'ensemble(%' THEN raw ELSE '{"members": []}' END, '{"members": [{"judge": "VARCHAR", "score_a": "DOUBLE", "score_b": "DOUBLE",
                                               "parse_ok": "BOOLEAN"}]}').members) AS m
        FROM judged WHERE judge_version LIKE 'ensemble(%'
    )
),
member_agreement AS (
    -- a game whose parsed members give one verdict
    SELECT judge, avg(CASE WHEN count_distinct = 1 THEN 1.0 ELSE 0.0 END) AS member_agreement
    FROM (SELECT judge, judgment_id, count(DISTINCT x_verdict) AS count_distinct, count(*) AS parsed
          FROM member_games WHERE member_ok GROUP BY judge, judgment_id)
    WHERE parsed >= 2
    GROUP BY judge
),
member_consistency AS (
    -- per member: the share of battles whose two games (the answers swapped) it decided alike
    SELECT g1.judge, g1.member, avg(CASE WHEN g1.x_verdict = g2.x_verdict THEN 1.0 ELSE 0.0 END) AS consistency
    FROM member_games AS g1
    JOIN member_games AS g2 ON g1.judge = g2.judge AND g1.battle_id = g2.battle_id AND g1.member = g2.member
        AND g1.game = 1 AND g2.game = 2
    WHERE g1.member_ok AND g2.member_ok
    GROUP BY g1.judge, g1.member
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
       FROM decided AS d WHERE d.judge = p.judge AND length(d.text_a) <> length(d.text_b)) AS longer_answer_win_rate,
    (SELECT a.member_agreement FROM member_agreement AS a WHERE a.judge = p.judge) AS member_agreement,
    (SELECT min(c.consistency) FROM member_consistency AS c WHERE c.judge = p.judge) AS member_position_consistency,
    (SELECT string_agg(c.member || ' ' || printf('%.3f', c.consistency), ', ' ORDER BY c.member)
       FROM member_consistency AS c WHERE c.judge = p.judge) AS member_consistency
FROM per_judge AS p
{%- endmacro %}
