DROP TABLE firedrill.backups;
