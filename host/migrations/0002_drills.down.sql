DROP TABLE firedrill.drills;
