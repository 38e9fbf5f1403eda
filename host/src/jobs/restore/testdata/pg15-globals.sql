--
-- PostgreSQL database cluster dump
--

\restrict JVEF1erDfwGZBGNJmg8EHqbMcdarb1kAvd8uxc3Am9MwFjo4DzYrlvNhtyiYP34

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE app_owner;
ALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;

--
-- User Configurations
--








\unrestrict JVEF1erDfwGZBGNJmg8EHqbMcdarb1kAvd8uxc3Am9MwFjo4DzYrlvNhtyiYP34

--
-- PostgreSQL database cluster dump complete
--

