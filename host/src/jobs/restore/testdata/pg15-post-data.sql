--
-- PostgreSQL database dump
--

\restrict zUKOnfrY07sXCZueFb41x1HRnEGuxbeBdvHP8mJsiXfUREBiJ9denJayNyfrZ2H

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

--
-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.orders
    ADD CONSTRAINT orders_pkey PRIMARY KEY (id);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: orders_user; Type: INDEX; Schema: app; Owner: postgres
--

CREATE INDEX orders_user ON app.orders USING btree (user_id) WHERE (total > (0)::numeric);


--
-- Name: parted_k_idx; Type: INDEX; Schema: app; Owner: postgres
--

CREATE INDEX parted_k_idx ON ONLY app.parted USING btree (k);


--
-- Name: parted_1_k_idx; Type: INDEX; Schema: app; Owner: postgres
--

CREATE INDEX parted_1_k_idx ON app.parted_1 USING btree (k);


--
-- Name: users_lower; Type: INDEX; Schema: app; Owner: postgres
--

CREATE UNIQUE INDEX users_lower ON app.users USING btree (lower(name));


--
-- Name: parted_1_k_idx; Type: INDEX ATTACH; Schema: app; Owner: postgres
--

ALTER INDEX app.parted_k_idx ATTACH PARTITION app.parted_1_k_idx;


--
-- Name: st; Type: STATISTICS; Schema: app; Owner: postgres
--

CREATE STATISTICS app.st ON user_id, total FROM app.orders;


ALTER STATISTICS app.st OWNER TO postgres;

--
-- Name: big_orders noop_rule; Type: RULE; Schema: app; Owner: postgres
--

CREATE RULE noop_rule AS
    ON DELETE TO app.big_orders DO INSTEAD NOTHING;


--
-- Name: users users_touch; Type: TRIGGER; Schema: app; Owner: postgres
--

CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();


--
-- Name: orders orders_user_id_fkey; Type: FK CONSTRAINT; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.orders
    ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES app.users(id);


--
-- Name: orders; Type: ROW SECURITY; Schema: app; Owner: postgres
--

ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;

--
-- Name: orders own; Type: POLICY; Schema: app; Owner: postgres
--

CREATE POLICY own ON app.orders USING ((user_id > 0));


--
-- Name: pub; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION pub WITH (publish = 'insert, update, delete, truncate');


ALTER PUBLICATION pub OWNER TO postgres;

--
-- Name: pub users; Type: PUBLICATION TABLE; Schema: app; Owner: postgres
--

ALTER PUBLICATION pub ADD TABLE ONLY app.users;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: app; Owner: postgres
--

ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA app GRANT SELECT ON TABLES  TO app_owner;


--
-- Name: totals; Type: MATERIALIZED VIEW DATA; Schema: app; Owner: postgres
--

REFRESH MATERIALIZED VIEW app.totals;


--
-- PostgreSQL database dump complete
--

\unrestrict zUKOnfrY07sXCZueFb41x1HRnEGuxbeBdvHP8mJsiXfUREBiJ9denJayNyfrZ2H

