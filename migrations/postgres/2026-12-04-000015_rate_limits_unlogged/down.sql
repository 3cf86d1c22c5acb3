ALTER TABLE rate_limiting SET LOGGED;
