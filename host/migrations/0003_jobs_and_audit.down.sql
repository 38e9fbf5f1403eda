DROP TABLE firedrill.audit;
DROP TABLE firedrill.jobs;
