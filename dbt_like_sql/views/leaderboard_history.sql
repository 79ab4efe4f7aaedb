-- Every round's leaderboard row with the model's registry entry (stage, parent, dataset hash,
-- training metrics) and, for the round's candidate and incumbent, the promotion decision.
SELECT
    l.round,
    l.model,
    l.role,
    l.kind,
    l.stage,
    r.round AS trained_in_round,
    r.parent,
    l.rating,
    l.ci_low,
    l.ci_high,
    l.rank,
    l.battles,
    p.promoted AS promoted,
    p.diff AS diff_vs_incumbent,
    p.ci_low AS diff_ci_low,
    p.ci_high AS diff_ci_high,
    p.reason AS decision,
    r.dataset_hash,
    json_extract(r.manifest, '$.metrics') AS training_metrics,
    l.testset_version,
    l.anchor
FROM leaderboard AS l
LEFT JOIN model_registry AS r ON r.model = l.model
LEFT JOIN promotions AS p ON p.round = l.round AND p.candidate = l.model
ORDER BY l.round, l.rating DESC
