"""Build the bundled Spider-format dataset, deterministically.

    python -m agentgym.envs.spider_sql.make_data            # rebuild envs/spider_sql/data/ in place
    python -m agentgym.envs.spider_sql.make_data --out DIR  # build elsewhere (the tests compare the two)

Seven small SQLite databases over different domains, with foreign keys and generated but plausible rows, and
questions paired with gold SQL in Spider's style. Four databases serve the train split and three others the dev
split, so dev questions are over unseen schemas, as in Spider. Every gold query is checked here: it runs, returns
at least one row that is not all NULL, and (when it orders rows) returns the same rows in the same order when
SQLite scans tables in reverse, so ties cannot make the answer depend on the query plan.

Rows come from :mod:`random` seeded per database; question constants (a genre, a name) are picked from the built
database by small SQL queries, so every question is about values that exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentgym.envs.spider_sql.sql_text import classify_hardness, sql_tokens, sql_tokens_no_value

SEED = 5

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary for generated rows
# ---------------------------------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Amelia", "Bruno", "Carmen", "Daniel", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kavya", "Liam",
    "Mara", "Nikolai", "Olivia", "Pablo", "Quinn", "Rosa", "Samir", "Tessa", "Umar", "Vera", "Wei", "Ximena",
    "Yusuf", "Zoe", "Anton", "Beatriz", "Cyrus", "Dalia", "Emil", "Freya", "Goran", "Hana", "Ivan", "Julia",
    "Kenji", "Leona", "Mateo", "Nadia", "Oskar", "Priya", "Rafael", "Sofia", "Tomas", "Ulla", "Viktor", "Wanda",
    "Yara", "Zain", "Aisha", "Boris", "Chloe", "Dmitri", "Esther", "Felix", "Gemma", "Hugo", "Ingrid", "Joao",
]
LAST_NAMES = [
    "Abbott", "Berg", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann", "Ito", "Jansen",
    "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quispe", "Rossi", "Schmidt", "Tanaka", "Ulrich",
    "Varga", "Weber", "Xu", "Yilmaz", "Zeller", "Almeida", "Brennan", "Costa", "Dalton", "Ferreira", "Haddad",
    "Jensen", "Lindqvist", "Mendes", "Nakamura", "Olsen", "Park", "Reyes", "Silva", "Thompson", "Vidal",
    "Wallace", "Andersson", "Bianchi", "Carvalho", "Duarte", "Evans", "Santos", "Morgan",
]
CITIES = ["Lisbon", "Porto", "Madrid", "Valencia", "Lyon", "Hamburg", "Vienna", "Prague", "Dublin", "Bologna"]


def unique_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct 'First Last' names."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def random_date(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    """A uniformly random day in [start, end]."""
    return start + dt.timedelta(days=rng.randrange((end - start).days + 1))


# ---------------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Q:
    """A question template and its gold SQL.

    ``picks`` binds each ``{name}`` to (picker SQL, row offsets): instantiation i uses row ``offsets[i]`` of the
    picker's result. Without picks the template is used once as it is.
    """

    question: str
    query: str
    picks: dict[str, tuple[str, list[int]]] = field(default_factory=dict)


@dataclass
class DbSpec:
    """One database: its DDL, its row generator, its questions and its split."""

    db_id: str
    split: str
    ddl: str
    fill: Callable[[random.Random], dict[str, list[tuple]]]
    """Rows by table name, inserted in the order of ``ddl``."""
    questions: list[Q]


# --- city_library (train) ------------------------------------------------------------------------------------

LIBRARY_DDL = """
CREATE TABLE author (
  author_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  country TEXT,
  birth_year INTEGER
);
CREATE TABLE book (
  book_id INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  author_id INTEGER NOT NULL,
  genre TEXT,
  publication_year INTEGER,
  pages INTEGER,
  FOREIGN KEY (author_id) REFERENCES author(author_id)
);
CREATE TABLE member (
  member_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT,
  age INTEGER,
  membership_type TEXT,
  join_year INTEGER
);
CREATE TABLE loan (
  loan_id INTEGER PRIMARY KEY,
  book_id INTEGER NOT NULL,
  member_id INTEGER NOT NULL,
  loan_date TEXT,
  return_date TEXT,
  late_fee REAL,
  FOREIGN KEY (book_id) REFERENCES book(book_id),
  FOREIGN KEY (member_id) REFERENCES member(member_id)
);
"""

TITLE_ADJ = ["Silent", "Hidden", "Last", "Burning", "Quiet", "Northern", "Broken", "Golden", "Distant", "Secret",
             "Winter", "Crimson", "Lost", "Endless", "Paper"]
TITLE_NOUN = ["River", "Garden", "Harbor", "Clock", "Mirror", "Orchard", "Lantern", "Island", "Letter", "Forest",
              "Bridge", "Tide", "Archive", "Compass", "Kingdom"]
GENRES = ["Fiction", "Mystery", "Science", "History", "Poetry", "Biography", "Fantasy", "Children"]
AUTHOR_COUNTRIES = ["England", "France", "Germany", "Italy", "Spain", "Japan", "Nigeria", "Brazil", "Canada",
                    "India", "Sweden", "Mexico"]


def fill_library(rng: random.Random) -> dict[str, list[tuple]]:
    authors = []
    for i, name in enumerate(unique_names(rng, 24), start=1):
        authors.append((i, name, rng.choice(AUTHOR_COUNTRIES), rng.randint(1850, 1992)))
    titles: list[str] = []
    while len(titles) < 70:
        a, n, m = rng.choice(TITLE_ADJ), rng.choice(TITLE_NOUN), rng.choice(TITLE_NOUN)
        t = rng.choice([f"The {a} {n}", f"{n} of the {a} {m}", f"A {n} in {rng.choice(CITIES)}", f"{a} {n}s"])
        if t not in titles:
            titles.append(t)
    # Author 5 is the most prolific (9 books); authors 21-24 have none in the library.
    owners = [5] * 9
    while len(owners) < 70:
        a = rng.randint(1, 20)
        if a != 5 and owners.count(a) < 4:
            owners.append(a)
    rng.shuffle(owners)
    books = []
    for i, (title, a) in enumerate(zip(titles, owners), start=1):
        born = authors[a - 1][3]
        year = min(2023, born + rng.randint(22, 75))
        pages = rng.randint(9, 85) * 10 + rng.randint(0, 9)
        books.append((i, title, a, rng.choice(GENRES), year, pages))
    b = rng.randrange(70)
    books[b] = books[b][:5] + (1104,)  # one clearly longest book
    members = []
    for i, name in enumerate(unique_names(rng, 45), start=1):
        age = rng.randint(16, 84)
        kind = "student" if age < 25 else "senior" if age >= 65 else "standard"
        members.append((i, name, rng.choice(CITIES[:7]), age, kind, rng.randint(2010, 2023)))
    loans = []
    borrowers = list(range(1, 40))  # members 40-45 never borrow
    lendable = list(range(1, 61))  # books 61-70 are never borrowed
    for i in range(1, 171):
        day = random_date(rng, dt.date(2022, 1, 3), dt.date(2023, 12, 15))
        kept = rng.randint(5, 40)
        if day > dt.date(2023, 10, 1) and rng.random() < 0.5:
            returned, fee = None, None
        else:
            returned = (day + dt.timedelta(days=kept)).isoformat()
            fee = max(0, kept - 21) * 0.25
        loans.append((i, rng.choice(lendable), rng.choice(borrowers), day.isoformat(), returned, fee))
    return {"author": authors, "book": books, "member": members, "loan": loans}


LIBRARY_QUESTIONS = [
    Q("How many authors are there?", "SELECT count(*) FROM author"),
    Q("How many books does the library have?", "SELECT count(*) FROM book"),
    Q("List the titles of all books in the {g} genre.", "SELECT title FROM book WHERE genre = '{g}'",
      {"g": ("SELECT DISTINCT genre FROM book ORDER BY genre", [0, 3])}),
    Q("What are the names and ages of members who live in {c}?",
      "SELECT name, age FROM member WHERE city = '{c}'",
      {"c": ("SELECT DISTINCT city FROM member ORDER BY city", [1, 4])}),
    Q("What is the average number of pages of the books?", "SELECT avg(pages) FROM book"),
    Q("Which different countries do the authors come from?", "SELECT DISTINCT country FROM author"),
    Q("Give the titles of books published after {y}.", "SELECT title FROM book WHERE publication_year > {y}",
      {"y": ("SELECT 2010 UNION ALL SELECT 1990", [0, 1])}),
    Q("List the names of all members from the oldest to the youngest, members of the same age in alphabetical order.",
      "SELECT name FROM member ORDER BY age DESC, name"),
    Q("What is the title of the longest book?", "SELECT title FROM book ORDER BY pages DESC LIMIT 1"),
    Q("How many books are there in each genre?", "SELECT genre, count(*) FROM book GROUP BY genre"),
    Q("Who wrote the book titled '{t}'?",
      "SELECT T2.name FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id WHERE T1.title = '{t}'",
      {"t": ("SELECT title FROM book ORDER BY book_id", [6, 31])}),
    Q("How many loans have not been returned yet?", "SELECT count(*) FROM loan WHERE return_date IS NULL"),
    Q("What is the total amount of late fees charged?", "SELECT sum(late_fee) FROM loan"),
    Q("Find the names of members who have borrowed more than 5 books.",
      "SELECT T2.name FROM loan AS T1 JOIN member AS T2 ON T1.member_id = T2.member_id "
      "GROUP BY T1.member_id HAVING count(*) > 5"),
    Q("Which author has written the most books in the library? Give the name.",
      "SELECT T2.name FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id "
      "GROUP BY T1.author_id ORDER BY count(*) DESC LIMIT 1"),
    Q("Which authors have no books in the library? List their names.",
      "SELECT name FROM author WHERE author_id NOT IN (SELECT author_id FROM book)"),
    Q("What are the titles of books that have never been borrowed?",
      "SELECT title FROM book WHERE book_id NOT IN (SELECT book_id FROM loan)"),
    Q("List the titles of the books borrowed by {m}.",
      "SELECT T3.title FROM member AS T1 JOIN loan AS T2 ON T1.member_id = T2.member_id "
      "JOIN book AS T3 ON T2.book_id = T3.book_id WHERE T1.name = '{m}'",
      {"m": ("SELECT name FROM member WHERE member_id IN (SELECT member_id FROM loan) ORDER BY member_id", [2, 17])}),
    Q("Which cities have more than 6 members?", "SELECT city FROM member GROUP BY city HAVING count(*) > 6"),
    Q("What is the average age of members for each membership type?",
      "SELECT membership_type, avg(age) FROM member GROUP BY membership_type"),
    Q("Which genres have both books published before 1950 and books published after 2000?",
      "SELECT genre FROM book WHERE publication_year < 1950 INTERSECT "
      "SELECT genre FROM book WHERE publication_year > 2000"),
    Q("Give the titles of books that have more pages than the average book.",
      "SELECT title FROM book WHERE pages > (SELECT avg(pages) FROM book)"),
    Q("How many different members have borrowed a {g} book?",
      "SELECT count(DISTINCT T1.member_id) FROM loan AS T1 JOIN book AS T2 ON T1.book_id = T2.book_id "
      "WHERE T2.genre = '{g}'",
      {"g": ("SELECT DISTINCT genre FROM book ORDER BY genre", [5, 6])}),
    Q("For each member who has borrowed books, give the name and the number of loans.",
      "SELECT T2.name, count(*) FROM loan AS T1 JOIN member AS T2 ON T1.member_id = T2.member_id "
      "GROUP BY T1.member_id"),
    Q("What are the name and city of the oldest member?",
      "SELECT name, city FROM member ORDER BY age DESC LIMIT 1"),
    Q("Show the title and publication year of books published between 1990 and 2010.",
      "SELECT title, publication_year FROM book WHERE publication_year BETWEEN 1990 AND 2010"),
    Q("Which authors have a name containing '{s}'?", "SELECT name FROM author WHERE name LIKE '%{s}%'",
      {"s": ("SELECT 'son' UNION ALL SELECT 'er'", [0, 1])}),
    Q("Which genre has the highest average number of pages?",
      "SELECT genre FROM book GROUP BY genre ORDER BY avg(pages) DESC LIMIT 1"),
    Q("Find the names of members who borrowed both a Mystery book and a History book.",
      "SELECT T1.name FROM member AS T1 JOIN loan AS T2 ON T1.member_id = T2.member_id "
      "JOIN book AS T3 ON T2.book_id = T3.book_id WHERE T3.genre = 'Mystery' INTERSECT "
      "SELECT T1.name FROM member AS T1 JOIN loan AS T2 ON T1.member_id = T2.member_id "
      "JOIN book AS T3 ON T2.book_id = T3.book_id WHERE T3.genre = 'History'"),
    Q("How many books were written by authors from each country?",
      "SELECT T2.country, count(*) FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id "
      "GROUP BY T2.country"),
    Q("What is the total late fee paid by members of each membership type?",
      "SELECT T2.membership_type, sum(T1.late_fee) FROM loan AS T1 JOIN member AS T2 "
      "ON T1.member_id = T2.member_id GROUP BY T2.membership_type"),
    Q("Which members joined in {y}? Give their names.", "SELECT name FROM member WHERE join_year = {y}",
      {"y": ("SELECT join_year FROM member GROUP BY join_year ORDER BY count(*) DESC, join_year", [0, 2])}),
    Q("What are the earliest and the latest publication years?",
      "SELECT min(publication_year), max(publication_year) FROM book"),
    Q("List the names of authors from {c} who wrote a book with more than 400 pages.",
      "SELECT DISTINCT T2.name FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id "
      "WHERE T2.country = '{c}' AND T1.pages > 400",
      {"c": ("SELECT T2.country FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id "
             "WHERE T1.pages > 400 GROUP BY T2.country ORDER BY count(*) DESC, T2.country", [0, 1])}),
    Q("Which members have never borrowed a book? List their names.",
      "SELECT name FROM member EXCEPT SELECT T1.name FROM member AS T1 JOIN loan AS T2 "
      "ON T1.member_id = T2.member_id"),
    Q("How many books were written by authors born after 1950?",
      "SELECT count(*) FROM book WHERE author_id IN (SELECT author_id FROM author WHERE birth_year > 1950)"),
    Q("What are the titles of the three most borrowed books, most borrowed first and ties broken by title?",
      "SELECT T2.title FROM loan AS T1 JOIN book AS T2 ON T1.book_id = T2.book_id "
      "GROUP BY T1.book_id ORDER BY count(*) DESC, T2.title LIMIT 3"),
    Q("For loans that are still open, list the book title and the borrower's name.",
      "SELECT T2.title, T3.name FROM loan AS T1 JOIN book AS T2 ON T1.book_id = T2.book_id "
      "JOIN member AS T3 ON T1.member_id = T3.member_id WHERE T1.return_date IS NULL"),
    Q("How many loans started in {y}?", "SELECT count(*) FROM loan WHERE loan_date LIKE '{y}%'",
      {"y": ("SELECT '2022' UNION ALL SELECT '2023'", [0])}),
    Q("What is the name of the youngest student member?",
      "SELECT name FROM member WHERE membership_type = 'student' ORDER BY age LIMIT 1"),
    Q("Which countries have more than two authors, and how many authors does each have?",
      "SELECT country, count(*) FROM author GROUP BY country HAVING count(*) > 2"),
    Q("List the titles of Poetry or Fantasy books with fewer than 300 pages.",
      "SELECT title FROM book WHERE (genre = 'Poetry' OR genre = 'Fantasy') AND pages < 300"),
]

# --- health_clinic (train) -----------------------------------------------------------------------------------

CLINIC_DDL = """
CREATE TABLE department (
  department_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  floor INTEGER,
  phone_extension TEXT
);
CREATE TABLE doctor (
  doctor_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  department_id INTEGER NOT NULL,
  hire_year INTEGER,
  salary INTEGER,
  FOREIGN KEY (department_id) REFERENCES department(department_id)
);
CREATE TABLE patient (
  patient_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  gender TEXT,
  birth_year INTEGER,
  city TEXT,
  insurance TEXT
);
CREATE TABLE appointment (
  appointment_id INTEGER PRIMARY KEY,
  patient_id INTEGER NOT NULL,
  doctor_id INTEGER NOT NULL,
  appointment_date TEXT,
  duration_minutes INTEGER,
  cost REAL,
  status TEXT,
  FOREIGN KEY (patient_id) REFERENCES patient(patient_id),
  FOREIGN KEY (doctor_id) REFERENCES doctor(doctor_id)
);
CREATE TABLE prescription (
  prescription_id INTEGER PRIMARY KEY,
  appointment_id INTEGER NOT NULL,
  medication TEXT NOT NULL,
  dose_mg INTEGER,
  days INTEGER,
  FOREIGN KEY (appointment_id) REFERENCES appointment(appointment_id)
);
"""

DEPARTMENTS = [("Cardiology", 3), ("Pediatrics", 1), ("Dermatology", 2), ("Neurology", 4), ("Orthopedics", 2),
               ("General Practice", 1), ("Ophthalmology", 3)]
MEDICATIONS = [("Amoxicillin", [250, 500]), ("Ibuprofen", [200, 400]), ("Metformin", [500, 850]),
               ("Atorvastatin", [10, 20, 40]), ("Lisinopril", [5, 10]), ("Cetirizine", [10]),
               ("Omeprazole", [20, 40]), ("Prednisone", [5, 20])]


def fill_clinic(rng: random.Random) -> dict[str, list[tuple]]:
    departments = [(i, n, f, f"{f}{i:02d}{rng.randint(0, 9)}") for i, (n, f) in enumerate(DEPARTMENTS, start=1)]
    doctors = []
    for i, name in enumerate(unique_names(rng, 18), start=1):
        # Cardiology has the most doctors (5) and Ophthalmology a single one.
        dept = 7 if i == 18 else 1 if i in (16, 17) else (i - 1) % 6 + 1
        hired = rng.randint(1995, 2022)
        salary = 90000 + (2023 - hired) * 2500 + rng.randint(0, 40) * 500
        doctors.append((i, f"Dr. {name}", dept, hired, salary))
    doctors[3] = doctors[3][:4] + (260000,)  # one clearly best-paid doctor
    patients = []
    for i, name in enumerate(unique_names(rng, 60), start=1):
        patients.append((i, name, rng.choice("FM"), rng.randint(1935, 2020), rng.choice(CITIES[:6]),
                         rng.choice(["public", "public", "private", "none"])))
    appointments = []
    for i in range(1, 201):
        day = random_date(rng, dt.date(2023, 1, 2), dt.date(2023, 12, 22))
        doc = 2 if i % 9 == 0 else rng.randint(1, 18)  # doctor 2 sees the most patients
        dur = rng.choice([15, 20, 30, 30, 45, 60])
        status = rng.choice(["completed"] * 7 + ["cancelled", "no-show"])
        cost = 0.0 if status != "completed" else dur * 2.5 + rng.randint(0, 8) * 5
        patient = rng.randint(1, 54)  # patients 55-60 are registered but have no appointment
        appointments.append((i, patient, doc, day.isoformat(), dur, cost, status))
    prescriptions = []
    pid = 1
    for appt in appointments:
        if appt[6] != "completed" or rng.random() < 0.45:
            continue
        for _ in range(rng.choice([1, 1, 1, 2])):
            med, doses = rng.choice(MEDICATIONS)
            prescriptions.append((pid, appt[0], med, rng.choice(doses), rng.choice([5, 7, 10, 14, 30, 90])))
            pid += 1
    return {"department": departments, "doctor": doctors, "patient": patients, "appointment": appointments,
            "prescription": prescriptions}


CLINIC_QUESTIONS = [
    Q("How many doctors work at the clinic?", "SELECT count(*) FROM doctor"),
    Q("List the names of all departments.", "SELECT name FROM department"),
    Q("Which departments are on floor {f}?", "SELECT name FROM department WHERE floor = {f}",
      {"f": ("SELECT DISTINCT floor FROM department ORDER BY floor", [0, 2])}),
    Q("How many patients live in {c}?", "SELECT count(*) FROM patient WHERE city = '{c}'",
      {"c": ("SELECT DISTINCT city FROM patient ORDER BY city", [0, 3])}),
    Q("What is the average salary of the doctors?", "SELECT avg(salary) FROM doctor"),
    Q("What is the name of the doctor with the highest salary?",
      "SELECT name FROM doctor ORDER BY salary DESC LIMIT 1"),
    Q("List the names and hire years of doctors hired after 2015, most recent first.",
      "SELECT name, hire_year FROM doctor WHERE hire_year > 2015 ORDER BY hire_year DESC, name"),
    Q("How many appointments were cancelled?", "SELECT count(*) FROM appointment WHERE status = 'cancelled'"),
    Q("How many appointments have each status?", "SELECT status, count(*) FROM appointment GROUP BY status"),
    Q("Which department does {d} work in?",
      "SELECT T2.name FROM doctor AS T1 JOIN department AS T2 ON T1.department_id = T2.department_id "
      "WHERE T1.name = '{d}'",
      {"d": ("SELECT name FROM doctor ORDER BY doctor_id", [0, 9])}),
    Q("How many doctors does each department have? Give department names and counts.",
      "SELECT T2.name, count(*) FROM doctor AS T1 JOIN department AS T2 ON T1.department_id = T2.department_id "
      "GROUP BY T1.department_id"),
    Q("Which department has the most doctors?",
      "SELECT T2.name FROM doctor AS T1 JOIN department AS T2 ON T1.department_id = T2.department_id "
      "GROUP BY T1.department_id ORDER BY count(*) DESC, T2.name LIMIT 1"),
    Q("Which department has only one doctor?",
      "SELECT T2.name FROM doctor AS T1 JOIN department AS T2 ON T1.department_id = T2.department_id "
      "GROUP BY T1.department_id HAVING count(*) = 1"),
    Q("What is the total cost of all completed appointments?",
      "SELECT sum(cost) FROM appointment WHERE status = 'completed'"),
    Q("Which doctor has had the most appointments? Give the name.",
      "SELECT T2.name FROM appointment AS T1 JOIN doctor AS T2 ON T1.doctor_id = T2.doctor_id "
      "GROUP BY T1.doctor_id ORDER BY count(*) DESC LIMIT 1"),
    Q("List the names of patients who have never had an appointment.",
      "SELECT name FROM patient WHERE patient_id NOT IN (SELECT patient_id FROM appointment)"),
    Q("Which medications have been prescribed? List each once.", "SELECT DISTINCT medication FROM prescription"),
    Q("How many prescriptions are there for each medication?",
      "SELECT medication, count(*) FROM prescription GROUP BY medication"),
    Q("What is the most prescribed medication?",
      "SELECT medication FROM prescription GROUP BY medication ORDER BY count(*) DESC LIMIT 1"),
    Q("List the medications prescribed to {p}.",
      "SELECT T3.medication FROM patient AS T1 JOIN appointment AS T2 ON T1.patient_id = T2.patient_id "
      "JOIN prescription AS T3 ON T2.appointment_id = T3.appointment_id WHERE T1.name = '{p}'",
      {"p": ("SELECT T1.name FROM patient AS T1 JOIN appointment AS T2 ON T1.patient_id = T2.patient_id "
             "JOIN prescription AS T3 ON T2.appointment_id = T3.appointment_id "
             "GROUP BY T1.patient_id ORDER BY count(*) DESC, T1.name", [0, 4])}),
    Q("What are the names of patients born before 1950 who have private insurance?",
      "SELECT name FROM patient WHERE birth_year < 1950 AND insurance = 'private'"),
    Q("How many female and how many male patients are there?",
      "SELECT gender, count(*) FROM patient GROUP BY gender"),
    Q("Which doctors earn more than the average doctor salary?",
      "SELECT name FROM doctor WHERE salary > (SELECT avg(salary) FROM doctor)"),
    Q("What is the average duration of appointments with doctors of the {d} department?",
      "SELECT avg(T1.duration_minutes) FROM appointment AS T1 JOIN doctor AS T2 ON T1.doctor_id = T2.doctor_id "
      "JOIN department AS T3 ON T2.department_id = T3.department_id WHERE T3.name = '{d}'",
      {"d": ("SELECT name FROM department ORDER BY department_id", [0, 3])}),
    Q("Which patients have had more than 5 appointments? Give names and the number of appointments.",
      "SELECT T2.name, count(*) FROM appointment AS T1 JOIN patient AS T2 ON T1.patient_id = T2.patient_id "
      "GROUP BY T1.patient_id HAVING count(*) > 5"),
    Q("Which cities have patients with no insurance and also patients with private insurance?",
      "SELECT city FROM patient WHERE insurance = 'none' INTERSECT SELECT city FROM patient "
      "WHERE insurance = 'private'"),
    Q("Which patients missed an appointment (status no-show)? List each name once.",
      "SELECT DISTINCT T2.name FROM appointment AS T1 JOIN patient AS T2 ON T1.patient_id = T2.patient_id "
      "WHERE T1.status = 'no-show'"),
    Q("What are the minimum, maximum and average doctor salaries?",
      "SELECT min(salary), max(salary), avg(salary) FROM doctor"),
    Q("How many appointments took place in {m} 2023?",
      "SELECT count(*) FROM appointment WHERE appointment_date LIKE '2023-{n}-%'",
      {"m": ("SELECT 'March' UNION ALL SELECT 'October'", [0, 1]),
       "n": ("SELECT '03' UNION ALL SELECT '10'", [0, 1])}),
    Q("What is the total cost of appointments for each department? Give the department name and the total.",
      "SELECT T3.name, sum(T1.cost) FROM appointment AS T1 JOIN doctor AS T2 ON T1.doctor_id = T2.doctor_id "
      "JOIN department AS T3 ON T2.department_id = T3.department_id GROUP BY T3.department_id"),
    Q("Which department earned the most from appointments?",
      "SELECT T3.name FROM appointment AS T1 JOIN doctor AS T2 ON T1.doctor_id = T2.doctor_id "
      "JOIN department AS T3 ON T2.department_id = T3.department_id GROUP BY T3.department_id "
      "ORDER BY sum(T1.cost) DESC LIMIT 1"),
    Q("List the names of doctors who have never had a cancelled appointment.",
      "SELECT name FROM doctor EXCEPT SELECT T2.name FROM appointment AS T1 JOIN doctor AS T2 "
      "ON T1.doctor_id = T2.doctor_id WHERE T1.status = 'cancelled'"),
    Q("Which prescriptions last 30 days or more? Give medication, dose and days.",
      "SELECT medication, dose_mg, days FROM prescription WHERE days >= 30"),
    Q("Find the names of patients who saw a doctor from Cardiology or Neurology.",
      "SELECT DISTINCT T1.name FROM patient AS T1 JOIN appointment AS T2 ON T1.patient_id = T2.patient_id "
      "JOIN doctor AS T3 ON T2.doctor_id = T3.doctor_id WHERE T3.department_id IN "
      "(SELECT department_id FROM department WHERE name = 'Cardiology' OR name = 'Neurology')"),
    Q("What is the average appointment cost for each insurance type?",
      "SELECT T2.insurance, avg(T1.cost) FROM appointment AS T1 JOIN patient AS T2 "
      "ON T1.patient_id = T2.patient_id GROUP BY T2.insurance"),
    Q("Give the date and the patient name of every appointment from 2023-12-15 on.",
      "SELECT T1.appointment_date, T2.name FROM appointment AS T1 JOIN patient AS T2 "
      "ON T1.patient_id = T2.patient_id WHERE T1.appointment_date >= '2023-12-15'"),
    Q("How many doctors were hired before 2005?", "SELECT count(*) FROM doctor WHERE hire_year < 2005"),
    Q("Which patient was born first? Give the name and birth year.",
      "SELECT name, birth_year FROM patient ORDER BY birth_year LIMIT 1"),
]

# --- regional_airline (train) --------------------------------------------------------------------------------

AIRLINE_DDL = """
CREATE TABLE airport (
  airport_code TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT,
  country TEXT,
  elevation_m INTEGER
);
CREATE TABLE aircraft (
  aircraft_id INTEGER PRIMARY KEY,
  model TEXT NOT NULL,
  manufacturer TEXT,
  seats INTEGER,
  year_built INTEGER
);
CREATE TABLE flight (
  flight_id INTEGER PRIMARY KEY,
  flight_number TEXT NOT NULL,
  origin_code TEXT NOT NULL,
  destination_code TEXT NOT NULL,
  aircraft_id INTEGER,
  departure_time TEXT,
  distance_km INTEGER,
  duration_minutes INTEGER,
  FOREIGN KEY (origin_code) REFERENCES airport(airport_code),
  FOREIGN KEY (destination_code) REFERENCES airport(airport_code),
  FOREIGN KEY (aircraft_id) REFERENCES aircraft(aircraft_id)
);
CREATE TABLE passenger (
  passenger_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  nationality TEXT,
  birth_year INTEGER,
  loyalty_tier TEXT
);
CREATE TABLE booking (
  booking_id INTEGER PRIMARY KEY,
  flight_id INTEGER NOT NULL,
  passenger_id INTEGER NOT NULL,
  travel_date TEXT,
  seat_class TEXT,
  price INTEGER,
  FOREIGN KEY (flight_id) REFERENCES flight(flight_id),
  FOREIGN KEY (passenger_id) REFERENCES passenger(passenger_id)
);
"""

AIRPORTS = [  # code, name, city, country, elevation, latitude, longitude
    ("LIS", "Lisbon Humberto Delgado Airport", "Lisbon", "Portugal", 114, 38.77, -9.13),
    ("OPO", "Porto Francisco Sa Carneiro Airport", "Porto", "Portugal", 69, 41.24, -8.68),
    ("MAD", "Madrid Barajas Airport", "Madrid", "Spain", 610, 40.47, -3.56),
    ("BCN", "Barcelona El Prat Airport", "Barcelona", "Spain", 4, 41.30, 2.08),
    ("CDG", "Paris Charles de Gaulle Airport", "Paris", "France", 119, 49.01, 2.55),
    ("LYS", "Lyon Saint-Exupery Airport", "Lyon", "France", 250, 45.73, 5.08),
    ("FRA", "Frankfurt Airport", "Frankfurt", "Germany", 111, 50.04, 8.56),
    ("MUC", "Munich Airport", "Munich", "Germany", 453, 48.35, 11.79),
    ("AMS", "Amsterdam Schiphol Airport", "Amsterdam", "Netherlands", -3, 52.31, 4.76),
    ("DUB", "Dublin Airport", "Dublin", "Ireland", 74, 53.42, -6.27),
    ("FCO", "Rome Fiumicino Airport", "Rome", "Italy", 5, 41.80, 12.25),
    ("VIE", "Vienna International Airport", "Vienna", "Austria", 183, 48.11, 16.57),
    ("ZRH", "Zurich Airport", "Zurich", "Switzerland", 432, 47.46, 8.55),
]
AIRCRAFT = [("A320neo", "Airbus", 180), ("A321", "Airbus", 220), ("A319", "Airbus", 144), ("737-800", "Boeing", 189),
            ("737 MAX 8", "Boeing", 178), ("E195", "Embraer", 120), ("E190", "Embraer", 100),
            ("ATR 72", "ATR", 70), ("Dash 8-400", "De Havilland", 78)]
NATIONALITIES = ["Portugal", "Spain", "France", "Germany", "Ireland", "Italy", "Netherlands", "Brazil", "United States"]


def _haversine_km(a: tuple, b: tuple) -> int:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[5], a[6], b[5], b[6]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return int(round(2 * 6371 * math.asin(math.sqrt(h))))


def fill_airline(rng: random.Random) -> dict[str, list[tuple]]:
    airports = [a[:5] for a in AIRPORTS]  # Zurich (ZRH, the last) has no flights yet
    aircraft = [(i, m, mf, s, rng.randint(2004, 2022)) for i, (m, mf, s) in enumerate(AIRCRAFT, start=1)]
    flights = []
    pairs: list[tuple[int, int]] = []
    hub = 0  # Lisbon is the hub: every other served airport has a flight to and from it
    for j in range(1, 12):
        pairs += [(hub, j), (j, hub)]
    while len(pairs) < 36:
        a, b = rng.sample(range(1, 12), 2)
        if (a, b) not in pairs:
            pairs.append((a, b))
    for i, (a, b) in enumerate(pairs, start=1):
        km = _haversine_km(AIRPORTS[a], AIRPORTS[b])
        plane = rng.randint(1, 9) if km < 1500 else rng.randint(1, 5)
        minutes = int(round(km / 750 * 60 + 35))
        dep = f"{rng.randint(6, 21):02d}:{rng.choice(['00', '15', '30', '45'])}"
        flights.append((i, f"RA{100 + i * 7}", AIRPORTS[a][0], AIRPORTS[b][0], plane, dep, km, minutes))
    passengers = []
    for i, name in enumerate(unique_names(rng, 50), start=1):
        tier = rng.choice(["none", "none", "none", "silver", "silver", "gold"])
        passengers.append((i, name, rng.choice(NATIONALITIES), rng.randint(1945, 2010), tier))
    bookings = []
    for i in range(1, 181):
        f = flights[rng.randrange(30)]  # flights 31-36 have no bookings yet
        cls = "business" if rng.random() < 0.18 else "economy"
        base = 40 + f[6] // 12
        price = base * (3 if cls == "business" else 1) + rng.randint(0, 12) * 5
        day = random_date(rng, dt.date(2024, 3, 1), dt.date(2024, 8, 31))
        bookings.append((i, f[0], rng.randint(1, 46), day.isoformat(), cls, price))  # passengers 47-50 never booked
    return {"airport": airports, "aircraft": aircraft, "flight": flights, "passenger": passengers,
            "booking": bookings}


AIRLINE_QUESTIONS = [
    Q("How many airports are there in the database?", "SELECT count(*) FROM airport"),
    Q("List the names of airports in {c}.", "SELECT name FROM airport WHERE country = '{c}'",
      {"c": ("SELECT country FROM airport GROUP BY country HAVING count(*) > 1 ORDER BY country", [0, 2])}),
    Q("Which airport has the highest elevation? Give its name.",
      "SELECT name FROM airport ORDER BY elevation_m DESC LIMIT 1"),
    Q("What is the code of the airport in {c}?", "SELECT airport_code FROM airport WHERE city = '{c}'",
      {"c": ("SELECT city FROM airport ORDER BY airport_code", [1, 7])}),
    Q("How many aircraft models are made by each manufacturer?",
      "SELECT manufacturer, count(*) FROM aircraft GROUP BY manufacturer"),
    Q("Which aircraft have more than 150 seats? Give model and seats.",
      "SELECT model, seats FROM aircraft WHERE seats > 150"),
    Q("What is the total number of seats over all aircraft?", "SELECT sum(seats) FROM aircraft"),
    Q("What is the model of the oldest aircraft?", "SELECT model FROM aircraft ORDER BY year_built LIMIT 1"),
    Q("How many flights depart from {a}?",
      "SELECT count(*) FROM flight AS T1 JOIN airport AS T2 ON T1.origin_code = T2.airport_code "
      "WHERE T2.city = '{a}'",
      {"a": ("SELECT city FROM airport ORDER BY airport_code", [0, 5])}),
    Q("What is the flight number of the longest flight by distance?",
      "SELECT flight_number FROM flight ORDER BY distance_km DESC LIMIT 1"),
    Q("List the flight numbers of flights from {o} to {d}.",
      "SELECT flight_number FROM flight WHERE origin_code = '{o}' AND destination_code = '{d}'",
      {"o": ("SELECT origin_code FROM flight ORDER BY flight_id", [0, 20]),
       "d": ("SELECT destination_code FROM flight ORDER BY flight_id", [0, 20])}),
    Q("What is the average flight duration in minutes?", "SELECT avg(duration_minutes) FROM flight"),
    Q("Which flights depart before 9:00? Give flight number and departure time ordered by time.",
      "SELECT flight_number, departure_time FROM flight WHERE departure_time < '09:00' "
      "ORDER BY departure_time, flight_number"),
    Q("How many flights arrive at each airport? Give the airport name and the count.",
      "SELECT T2.name, count(*) FROM flight AS T1 JOIN airport AS T2 ON T1.destination_code = T2.airport_code "
      "GROUP BY T1.destination_code"),
    Q("Which airport has the most departing flights? Give its city.",
      "SELECT T2.city FROM flight AS T1 JOIN airport AS T2 ON T1.origin_code = T2.airport_code "
      "GROUP BY T1.origin_code ORDER BY count(*) DESC LIMIT 1"),
    Q("Which airports have no departing flights?",
      "SELECT name FROM airport WHERE airport_code NOT IN (SELECT origin_code FROM flight)"),
    Q("What models of aircraft fly the flights to {c}?",
      "SELECT DISTINCT T2.model FROM flight AS T1 JOIN aircraft AS T2 ON T1.aircraft_id = T2.aircraft_id "
      "WHERE T1.destination_code = '{c}'",
      {"c": ("SELECT DISTINCT destination_code FROM flight ORDER BY destination_code", [2, 6])}),
    Q("How many passengers hold each loyalty tier?",
      "SELECT loyalty_tier, count(*) FROM passenger GROUP BY loyalty_tier"),
    Q("List the names of gold tier passengers from {n}.",
      "SELECT name FROM passenger WHERE loyalty_tier = 'gold' AND nationality = '{n}'",
      {"n": ("SELECT nationality FROM passenger WHERE loyalty_tier = 'gold' GROUP BY nationality "
             "ORDER BY count(*) DESC, nationality", [0, 1])}),
    Q("How many bookings are in business class?", "SELECT count(*) FROM booking WHERE seat_class = 'business'"),
    Q("What is the average price of bookings in each seat class?",
      "SELECT seat_class, avg(price) FROM booking GROUP BY seat_class"),
    Q("What is the most expensive booking? Give the passenger name and the price.",
      "SELECT T2.name, T1.price FROM booking AS T1 JOIN passenger AS T2 ON T1.passenger_id = T2.passenger_id "
      "ORDER BY T1.price DESC, T1.booking_id LIMIT 1"),
    Q("Which flights did {p} book? Give the flight numbers.",
      "SELECT T3.flight_number FROM passenger AS T1 JOIN booking AS T2 ON T1.passenger_id = T2.passenger_id "
      "JOIN flight AS T3 ON T2.flight_id = T3.flight_id WHERE T1.name = '{p}'",
      {"p": ("SELECT name FROM passenger WHERE passenger_id IN (SELECT passenger_id FROM booking) "
             "ORDER BY passenger_id", [3, 12])}),
    Q("Which passengers have never made a booking?",
      "SELECT name FROM passenger WHERE passenger_id NOT IN (SELECT passenger_id FROM booking)"),
    Q("Which flight has the most bookings? Give its flight number.",
      "SELECT T2.flight_number FROM booking AS T1 JOIN flight AS T2 ON T1.flight_id = T2.flight_id "
      "GROUP BY T1.flight_id ORDER BY count(*) DESC, T2.flight_number LIMIT 1"),
    Q("What is the total revenue from bookings on flights departing from Lisbon?",
      "SELECT sum(T1.price) FROM booking AS T1 JOIN flight AS T2 ON T1.flight_id = T2.flight_id "
      "WHERE T2.origin_code = 'LIS'"),
    Q("Which passengers have made more than 5 bookings? Give names.",
      "SELECT T2.name FROM booking AS T1 JOIN passenger AS T2 ON T1.passenger_id = T2.passenger_id "
      "GROUP BY T1.passenger_id HAVING count(*) > 5"),
    Q("Which cities can be reached directly from both Madrid and Paris?",
      "SELECT T2.city FROM flight AS T1 JOIN airport AS T2 ON T1.destination_code = T2.airport_code "
      "WHERE T1.origin_code = 'MAD' INTERSECT SELECT T2.city FROM flight AS T1 JOIN airport AS T2 "
      "ON T1.destination_code = T2.airport_code WHERE T1.origin_code = 'CDG'"),
    Q("List the flight numbers of flights longer than the average flight distance.",
      "SELECT flight_number FROM flight WHERE distance_km > (SELECT avg(distance_km) FROM flight)"),
    Q("For each aircraft manufacturer, what is the total distance of the flights it flies?",
      "SELECT T2.manufacturer, sum(T1.distance_km) FROM flight AS T1 JOIN aircraft AS T2 "
      "ON T1.aircraft_id = T2.aircraft_id GROUP BY T2.manufacturer"),
    Q("What are the names of passengers who travelled in business class on a flight to Dublin?",
      "SELECT DISTINCT T1.name FROM passenger AS T1 JOIN booking AS T2 ON T1.passenger_id = T2.passenger_id "
      "JOIN flight AS T3 ON T2.flight_id = T3.flight_id WHERE T2.seat_class = 'business' "
      "AND T3.destination_code = 'DUB'"),
    Q("Which countries have airports but no flights arriving there?",
      "SELECT country FROM airport EXCEPT SELECT T2.country FROM flight AS T1 JOIN airport AS T2 "
      "ON T1.destination_code = T2.airport_code"),
    Q("How many distinct aircraft models fly from Lisbon?",
      "SELECT count(DISTINCT aircraft_id) FROM flight WHERE origin_code = 'LIS'"),
    Q("List the shortest and longest flight distances.", "SELECT min(distance_km), max(distance_km) FROM flight"),
    Q("How many passengers were born after 1990?", "SELECT count(*) FROM passenger WHERE birth_year > 1990"),
    Q("Which bookings were made for travel in {m} 2024? Give booking id and price ordered by price.",
      "SELECT booking_id, price FROM booking WHERE travel_date LIKE '2024-{n}-%' ORDER BY price DESC, booking_id",
      {"m": ("SELECT 'June' UNION ALL SELECT 'August'", [0, 1]),
       "n": ("SELECT '06' UNION ALL SELECT '08'", [0, 1])}),
    Q("Which aircraft models are not used on any flight?",
      "SELECT model FROM aircraft WHERE aircraft_id NOT IN (SELECT aircraft_id FROM flight)"),
    Q("What is the average booking price paid by passengers of each nationality, for nationalities with more "
      "than 10 bookings?",
      "SELECT T2.nationality, avg(T1.price) FROM booking AS T1 JOIN passenger AS T2 "
      "ON T1.passenger_id = T2.passenger_id GROUP BY T2.nationality HAVING count(*) > 10"),
]

# --- online_shop (train) -------------------------------------------------------------------------------------

SHOP_DDL = """
CREATE TABLE customer (
  customer_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT,
  country TEXT,
  signup_date TEXT
);
CREATE TABLE product (
  product_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  category TEXT,
  price REAL,
  stock INTEGER
);
CREATE TABLE orders (
  order_id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL,
  order_date TEXT,
  status TEXT,
  FOREIGN KEY (customer_id) REFERENCES customer(customer_id)
);
CREATE TABLE order_item (
  order_id INTEGER NOT NULL,
  product_id INTEGER NOT NULL,
  quantity INTEGER,
  PRIMARY KEY (order_id, product_id),
  FOREIGN KEY (order_id) REFERENCES orders(order_id),
  FOREIGN KEY (product_id) REFERENCES product(product_id)
);
CREATE TABLE review (
  review_id INTEGER PRIMARY KEY,
  product_id INTEGER NOT NULL,
  customer_id INTEGER NOT NULL,
  rating INTEGER,
  review_date TEXT,
  FOREIGN KEY (product_id) REFERENCES product(product_id),
  FOREIGN KEY (customer_id) REFERENCES customer(customer_id)
);
"""

PRODUCTS = {
    "Kitchen": ["Chef Knife", "Cast Iron Pan", "Espresso Maker", "Cutting Board", "Salad Spinner", "Kettle"],
    "Garden": ["Pruning Shears", "Watering Can", "Garden Hose", "Seed Starter Kit", "Bird Feeder"],
    "Electronics": ["Wireless Earbuds", "Phone Charger", "Bluetooth Speaker", "USB Hub", "E-Reader",
                    "Smart Plug"],
    "Sports": ["Yoga Mat", "Jump Rope", "Water Bottle", "Tennis Balls", "Cycling Gloves"],
    "Books": ["Cookbook", "Travel Guide", "Puzzle Book", "Atlas"],
    "Toys": ["Building Blocks", "Wooden Train", "Kite"],
}
SHOP_COUNTRIES = ["Portugal", "Spain", "France", "Germany", "Italy", "Ireland", "Poland"]


def fill_shop(rng: random.Random) -> dict[str, list[tuple]]:
    customers = []
    for i, name in enumerate(unique_names(rng, 40), start=1):
        email = name.lower().replace(" ", ".") + rng.choice(["@mail.example", "@post.example", "@web.example"])
        day = random_date(rng, dt.date(2019, 1, 1), dt.date(2023, 6, 30))
        customers.append((i, name, email, rng.choice(SHOP_COUNTRIES), day.isoformat()))
    products = []
    pid = 1
    for cat in sorted(PRODUCTS):
        for name in PRODUCTS[cat]:
            price = rng.randint(6, 140) + rng.choice([0.0, 0.5, 0.75, 0.25])
            stock = 0 if pid % 11 == 0 else rng.randint(1, 250)
            products.append((pid, name, cat, price, stock))
            pid += 1
    k = next(i for i, p in enumerate(products) if p[1] == "Espresso Maker")
    products[k] = products[k][:3] + (249.0,) + products[k][4:]  # clearly the priciest product
    orders, items = [], []
    for i in range(1, 121):
        cust = rng.randint(1, 35)  # customers 36-40 never ordered
        day = random_date(rng, dt.date(2023, 1, 1), dt.date(2024, 6, 30))
        status = rng.choice(["delivered"] * 6 + ["shipped", "cancelled", "processing"])
        orders.append((i, cust, day.isoformat(), status))
        for p in rng.sample(range(1, len(products) - 2), rng.choice([1, 1, 2, 2, 3, 4])):  # last 3 never ordered
            items.append((i, p, rng.choice([1, 1, 1, 2, 2, 3, 5])))
    reviews = []
    for i in range(1, 91):
        o = orders[rng.randrange(len(orders))]
        mine = [it for it in items if it[0] == o[0]]
        p = rng.choice(mine)[1]
        day = dt.date.fromisoformat(o[2]) + dt.timedelta(days=rng.randint(3, 30))
        reviews.append((i, p, o[1], rng.choice([1, 2, 3, 3, 4, 4, 4, 5, 5, 5]), day.isoformat()))
    return {"customer": customers, "product": products, "orders": orders, "order_item": items, "review": reviews}


SHOP_QUESTIONS = [
    Q("How many customers are registered?", "SELECT count(*) FROM customer"),
    Q("List the names of products in the {c} category.", "SELECT name FROM product WHERE category = '{c}'",
      {"c": ("SELECT DISTINCT category FROM product ORDER BY category", [2, 3])}),
    Q("What is the most expensive product?", "SELECT name FROM product ORDER BY price DESC LIMIT 1"),
    Q("Which products are out of stock?", "SELECT name FROM product WHERE stock = 0"),
    Q("What is the average product price in each category?",
      "SELECT category, avg(price) FROM product GROUP BY category"),
    Q("How many customers come from each country?", "SELECT country, count(*) FROM customer GROUP BY country"),
    Q("What is the email address of {n}?", "SELECT email FROM customer WHERE name = '{n}'",
      {"n": ("SELECT name FROM customer ORDER BY customer_id", [4, 22])}),
    Q("List the names and prices of products cheaper than 20, cheapest first.",
      "SELECT name, price FROM product WHERE price < 20 ORDER BY price, name"),
    Q("How many orders have been cancelled?", "SELECT count(*) FROM orders WHERE status = 'cancelled'"),
    Q("How many orders did {n} place?",
      "SELECT count(*) FROM orders AS T1 JOIN customer AS T2 ON T1.customer_id = T2.customer_id "
      "WHERE T2.name = '{n}'",
      {"n": ("SELECT T2.name FROM orders AS T1 JOIN customer AS T2 ON T1.customer_id = T2.customer_id "
             "GROUP BY T1.customer_id ORDER BY count(*) DESC, T2.name", [0, 9])}),
    Q("Which customer placed the most orders?",
      "SELECT T2.name FROM orders AS T1 JOIN customer AS T2 ON T1.customer_id = T2.customer_id "
      "GROUP BY T1.customer_id ORDER BY count(*) DESC, T2.name LIMIT 1"),
    Q("Which customers have never placed an order?",
      "SELECT name FROM customer WHERE customer_id NOT IN (SELECT customer_id FROM orders)"),
    Q("Which products have never been ordered?",
      "SELECT name FROM product WHERE product_id NOT IN (SELECT product_id FROM order_item)"),
    Q("What is the total quantity ordered of each product? Give product names and totals.",
      "SELECT T2.name, sum(T1.quantity) FROM order_item AS T1 JOIN product AS T2 ON T1.product_id = T2.product_id "
      "GROUP BY T1.product_id"),
    Q("Which product has been ordered in the largest total quantity?",
      "SELECT T2.name FROM order_item AS T1 JOIN product AS T2 ON T1.product_id = T2.product_id "
      "GROUP BY T1.product_id ORDER BY sum(T1.quantity) DESC, T2.name LIMIT 1"),
    Q("What is the average rating of each product that has reviews? Give names and averages.",
      "SELECT T2.name, avg(T1.rating) FROM review AS T1 JOIN product AS T2 ON T1.product_id = T2.product_id "
      "GROUP BY T1.product_id"),
    Q("Which products have an average rating of at least 4?",
      "SELECT T2.name FROM review AS T1 JOIN product AS T2 ON T1.product_id = T2.product_id "
      "GROUP BY T1.product_id HAVING avg(T1.rating) >= 4"),
    Q("How many reviews gave a rating of 5?", "SELECT count(*) FROM review WHERE rating = 5"),
    Q("List the names of customers from {c} who signed up in 2022 or later.",
      "SELECT name FROM customer WHERE country = '{c}' AND signup_date >= '2022-01-01'",
      {"c": ("SELECT country FROM customer WHERE signup_date >= '2022-01-01' GROUP BY country "
             "ORDER BY count(*) DESC, country", [0, 2])}),
    Q("What is the total value of order {o}, computed as quantity times price?",
      "SELECT sum(T1.quantity * T2.price) FROM order_item AS T1 JOIN product AS T2 "
      "ON T1.product_id = T2.product_id WHERE T1.order_id = {o}",
      {"o": ("SELECT order_id FROM order_item GROUP BY order_id HAVING count(*) > 2 ORDER BY order_id", [0, 3])}),
    Q("Which categories have more than 5 products?",
      "SELECT category FROM product GROUP BY category HAVING count(*) > 5"),
    Q("List the products bought by {n}.",
      "SELECT DISTINCT T4.name FROM customer AS T1 JOIN orders AS T2 ON T1.customer_id = T2.customer_id "
      "JOIN order_item AS T3 ON T2.order_id = T3.order_id JOIN product AS T4 ON T3.product_id = T4.product_id "
      "WHERE T1.name = '{n}'",
      {"n": ("SELECT name FROM customer WHERE customer_id IN (SELECT customer_id FROM orders) "
             "ORDER BY customer_id", [1, 14])}),
    Q("Which products cost more than the average product price?",
      "SELECT name FROM product WHERE price > (SELECT avg(price) FROM product)"),
    Q("Which countries have customers who bought Electronics and also customers who bought Garden products?",
      "SELECT T1.country FROM customer AS T1 JOIN orders AS T2 ON T1.customer_id = T2.customer_id "
      "JOIN order_item AS T3 ON T2.order_id = T3.order_id JOIN product AS T4 ON T3.product_id = T4.product_id "
      "WHERE T4.category = 'Electronics' INTERSECT SELECT T1.country FROM customer AS T1 JOIN orders AS T2 "
      "ON T1.customer_id = T2.customer_id JOIN order_item AS T3 ON T2.order_id = T3.order_id "
      "JOIN product AS T4 ON T3.product_id = T4.product_id WHERE T4.category = 'Garden'"),
    Q("How many orders were placed in each month of 2023? Give the month as YYYY-MM and the count.",
      "SELECT substr(order_date, 1, 7), count(*) FROM orders WHERE order_date LIKE '2023%' "
      "GROUP BY substr(order_date, 1, 7)"),
    Q("What is the number of orders with each status?", "SELECT status, count(*) FROM orders GROUP BY status"),
    Q("List the customers who have written a review with a rating of 1.",
      "SELECT DISTINCT T2.name FROM review AS T1 JOIN customer AS T2 ON T1.customer_id = T2.customer_id "
      "WHERE T1.rating = 1"),
    Q("Which customers placed orders but never wrote a review?",
      "SELECT T1.name FROM customer AS T1 JOIN orders AS T2 ON T1.customer_id = T2.customer_id "
      "EXCEPT SELECT T1.name FROM customer AS T1 JOIN review AS T2 ON T1.customer_id = T2.customer_id"),
    Q("What are the lowest and highest product prices?", "SELECT min(price), max(price) FROM product"),
    Q("How many units of stock are there in total for Kitchen products?",
      "SELECT sum(stock) FROM product WHERE category = 'Kitchen'"),
    Q("Which category has the most expensive average price?",
      "SELECT category FROM product GROUP BY category ORDER BY avg(price) DESC LIMIT 1"),
    Q("Show the five most recent orders: order id, date and customer name.",
      "SELECT T1.order_id, T1.order_date, T2.name FROM orders AS T1 JOIN customer AS T2 "
      "ON T1.customer_id = T2.customer_id ORDER BY T1.order_date DESC, T1.order_id DESC LIMIT 5"),
    Q("How many different products were ordered in cancelled orders?",
      "SELECT count(DISTINCT T1.product_id) FROM order_item AS T1 JOIN orders AS T2 ON T1.order_id = T2.order_id "
      "WHERE T2.status = 'cancelled'"),
    Q("Which product names contain the word '{w}'?", "SELECT name FROM product WHERE name LIKE '%{w}%'",
      {"w": ("SELECT 'Book' UNION ALL SELECT 'er'", [0, 1])}),
    Q("Which customers spent more than 500 in total on delivered orders? Give names and totals.",
      "SELECT T1.name, sum(T3.quantity * T4.price) FROM customer AS T1 JOIN orders AS T2 "
      "ON T1.customer_id = T2.customer_id JOIN order_item AS T3 ON T2.order_id = T3.order_id "
      "JOIN product AS T4 ON T3.product_id = T4.product_id WHERE T2.status = 'delivered' "
      "GROUP BY T1.customer_id HAVING sum(T3.quantity * T4.price) > 500"),
    Q("How many customers signed up before 2020?", "SELECT count(*) FROM customer WHERE signup_date < '2020-01-01'"),
]

# --- music_festival (dev) ------------------------------------------------------------------------------------

FESTIVAL_DDL = """
CREATE TABLE festival (
  festival_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT,
  country TEXT,
  year INTEGER,
  attendance INTEGER
);
CREATE TABLE band (
  band_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  genre TEXT,
  home_country TEXT,
  formed_year INTEGER,
  member_count INTEGER
);
CREATE TABLE performance (
  festival_id INTEGER NOT NULL,
  band_id INTEGER NOT NULL,
  stage TEXT,
  day_number INTEGER,
  fee INTEGER,
  PRIMARY KEY (festival_id, band_id),
  FOREIGN KEY (festival_id) REFERENCES festival(festival_id),
  FOREIGN KEY (band_id) REFERENCES band(band_id)
);
"""

FESTIVALS = [("Northern Lights Fest", "Tromso", "Norway"), ("Riverside Sounds", "Ghent", "Belgium"),
             ("Sunset Valley", "Seville", "Spain"), ("Harbour Jam", "Gdansk", "Poland"),
             ("Pine Hill Festival", "Salzburg", "Austria"), ("Blue Meadow", "Leeds", "England")]
BAND_WORDS_A = ["Paper", "Velvet", "Electric", "Midnight", "Copper", "Wild", "Silver", "Hollow", "Neon", "Iron"]
BAND_WORDS_B = ["Owls", "Tigers", "Echoes", "Pilots", "Foxes", "Lanterns", "Wolves", "Sparrows", "Engines", "Tides"]
MUSIC_GENRES = ["Rock", "Folk", "Jazz", "Electronic", "Pop", "Metal"]


def fill_festival(rng: random.Random) -> dict[str, list[tuple]]:
    festivals = []
    fid = 1
    for name, city, country in FESTIVALS:
        for year in (2022, 2023):
            festivals.append((fid, name, city, country, year, rng.randint(60, 900) * 100))
            fid += 1
    festivals[7] = festivals[7][:5] + (120000,)  # Harbour Jam 2023 had the biggest crowd
    names: list[str] = []
    while len(names) < 30:
        n = f"The {rng.choice(BAND_WORDS_A)} {rng.choice(BAND_WORDS_B)}"
        if n not in names:
            names.append(n)
    bands = [(i, n, rng.choice(MUSIC_GENRES), rng.choice(["Norway", "Belgium", "Spain", "Poland", "England",
                                                          "Ireland", "Canada", "Australia"]),
              rng.randint(1985, 2020), rng.randint(2, 7)) for i, n in enumerate(names, start=1)]
    performances = []
    for f in festivals:
        for b in rng.sample(range(1, 27), rng.randint(6, 10)):  # bands 27-30 never played
            fee = rng.randint(8, 120) * 500
            performances.append((f[0], b, rng.choice(["Main", "Forest", "Tent"]), rng.randint(1, 3), fee))
    performances[5] = performances[5][:4] + (95000,)  # one clearly highest fee
    return {"festival": festivals, "band": bands, "performance": performances}


FESTIVAL_QUESTIONS = [
    Q("How many bands are there?", "SELECT count(*) FROM band"),
    Q("List the names of festivals held in {y}.", "SELECT name FROM festival WHERE year = {y}",
      {"y": ("SELECT 2022 UNION ALL SELECT 2023", [1])}),
    Q("What are the names of bands that play {g}?", "SELECT name FROM band WHERE genre = '{g}'",
      {"g": ("SELECT genre FROM band GROUP BY genre ORDER BY count(*) DESC, genre", [0, 2])}),
    Q("Which festival edition had the highest attendance? Give its name and year.",
      "SELECT name, year FROM festival ORDER BY attendance DESC LIMIT 1"),
    Q("What is the average attendance of festivals in 2023?", "SELECT avg(attendance) FROM festival WHERE year = 2023"),
    Q("How many bands are there of each genre?", "SELECT genre, count(*) FROM band GROUP BY genre"),
    Q("List the names of bands formed before 2000, ordered by formation year and then by name.",
      "SELECT name FROM band WHERE formed_year < 2000 ORDER BY formed_year, name"),
    Q("Which bands played at {f} in 2022?",
      "SELECT T3.name FROM festival AS T1 JOIN performance AS T2 ON T1.festival_id = T2.festival_id "
      "JOIN band AS T3 ON T2.band_id = T3.band_id WHERE T1.name = '{f}' AND T1.year = 2022",
      {"f": ("SELECT DISTINCT name FROM festival ORDER BY name", [0, 4])}),
    Q("How many performances did each band give? Give band names and counts.",
      "SELECT T2.name, count(*) FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "GROUP BY T1.band_id"),
    Q("Which band has performed the most times?",
      "SELECT T2.name FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "GROUP BY T1.band_id ORDER BY count(*) DESC, T2.name LIMIT 1"),
    Q("Which bands have never performed at a festival?",
      "SELECT name FROM band WHERE band_id NOT IN (SELECT band_id FROM performance)"),
    Q("What was the highest fee paid for a performance, and to which band?",
      "SELECT T2.name, T1.fee FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "ORDER BY T1.fee DESC LIMIT 1"),
    Q("What is the total fee paid by each festival edition? Give name, year and total.",
      "SELECT T1.name, T1.year, sum(T2.fee) FROM festival AS T1 JOIN performance AS T2 "
      "ON T1.festival_id = T2.festival_id GROUP BY T1.festival_id"),
    Q("Which bands played on the Main stage at more than one festival edition?",
      "SELECT T2.name FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "WHERE T1.stage = 'Main' GROUP BY T1.band_id HAVING count(*) > 1"),
    Q("Which countries host a festival and are also home to a band?",
      "SELECT country FROM festival INTERSECT SELECT home_country FROM band"),
    Q("Which bands have more members than the average band?",
      "SELECT name FROM band WHERE member_count > (SELECT avg(member_count) FROM band)"),
    Q("Which genres have been played at Northern Lights Fest?",
      "SELECT DISTINCT T3.genre FROM festival AS T1 JOIN performance AS T2 ON T1.festival_id = T2.festival_id "
      "JOIN band AS T3 ON T2.band_id = T3.band_id WHERE T1.name = 'Northern Lights Fest'"),
    Q("Which Rock bands never played on the Main stage?",
      "SELECT name FROM band WHERE genre = 'Rock' EXCEPT SELECT T2.name FROM performance AS T1 "
      "JOIN band AS T2 ON T1.band_id = T2.band_id WHERE T1.stage = 'Main'"),
    Q("What is the average fee for each genre?",
      "SELECT T2.genre, avg(T1.fee) FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "GROUP BY T2.genre"),
    Q("Which genre earned the most in total fees?",
      "SELECT T2.genre FROM performance AS T1 JOIN band AS T2 ON T1.band_id = T2.band_id "
      "GROUP BY T2.genre ORDER BY sum(T1.fee) DESC LIMIT 1"),
    Q("What are the smallest and largest attendances recorded?",
      "SELECT min(attendance), max(attendance) FROM festival"),
    Q("Which bands from {c} have played at any festival?",
      "SELECT DISTINCT T1.name FROM band AS T1 JOIN performance AS T2 ON T1.band_id = T2.band_id "
      "WHERE T1.home_country = '{c}'",
      {"c": ("SELECT T1.home_country FROM band AS T1 JOIN performance AS T2 ON T1.band_id = T2.band_id "
             "GROUP BY T1.home_country ORDER BY count(*) DESC, T1.home_country", [0])}),
]

# --- football_league (dev) -----------------------------------------------------------------------------------

FOOTBALL_DDL = """
CREATE TABLE club (
  club_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT,
  founded_year INTEGER,
  stadium TEXT,
  capacity INTEGER
);
CREATE TABLE player (
  player_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  club_id INTEGER NOT NULL,
  position TEXT,
  nationality TEXT,
  birth_year INTEGER,
  goals INTEGER,
  FOREIGN KEY (club_id) REFERENCES club(club_id)
);
CREATE TABLE game (
  game_id INTEGER PRIMARY KEY,
  season TEXT,
  round INTEGER,
  home_club_id INTEGER NOT NULL,
  away_club_id INTEGER NOT NULL,
  home_goals INTEGER,
  away_goals INTEGER,
  attendance INTEGER,
  FOREIGN KEY (home_club_id) REFERENCES club(club_id),
  FOREIGN KEY (away_club_id) REFERENCES club(club_id)
);
"""

CLUBS = [("Atletico Ribeira", "Porto", 1921, "Estadio do Rio"), ("Sporting Vale", "Braga", 1934, "Campo Verde"),
         ("Uniao Serrana", "Guarda", 1947, "Estadio da Serra"), ("Maritimo Norte", "Viana", 1912, "Estadio do Mar"),
         ("Clube Planalto", "Evora", 1958, "Arena Planalto"), ("Desportivo Lagos", "Lagos", 1939, "Estadio Sol"),
         ("Academica Leste", "Coimbra", 1905, "Estadio Academico"), ("Real Oeste", "Leiria", 1966, "Parque Oeste")]
POSITIONS = ["Goalkeeper", "Defender", "Defender", "Midfielder", "Midfielder", "Forward"]


def fill_football(rng: random.Random) -> dict[str, list[tuple]]:
    clubs = [(i, n, c, y, s, rng.randint(8, 50) * 1000) for i, (n, c, y, s) in enumerate(CLUBS, start=1)]
    players = []
    for i, name in enumerate(unique_names(rng, 64), start=1):
        pos = POSITIONS[(i - 1) % 6] if i > 6 else POSITIONS[i - 1]
        goals = {"Goalkeeper": 0, "Defender": rng.randint(0, 4), "Midfielder": rng.randint(0, 9),
                 "Forward": rng.randint(3, 19)}[pos]
        nat = rng.choice(["Portugal"] * 5 + ["Brazil", "Spain", "Angola", "Cape Verde", "France"])
        players.append((i, name, (i - 1) % 8 + 1, pos, nat, rng.randint(1988, 2005), goals))
    players[11] = players[11][:6] + (27,)  # the league's clear top scorer
    games = []
    gid = 1
    for season in ("2022-23", "2023-24"):
        rounds = list(range(1, 15))
        pairs = [(h, a) for h in range(1, 9) for a in range(1, 9) if h != a]
        rng.shuffle(pairs)
        for k, (h, a) in enumerate(pairs[:40]):
            hg, ag = rng.choice([0, 1, 1, 2, 2, 3, 4]), rng.choice([0, 0, 1, 1, 2, 3])
            if a == 8:  # Real Oeste never wins away
                ag = min(ag, hg)
            att = min(clubs[h - 1][5], rng.randint(4, 50) * 1000)
            games.append((gid, season, rounds[k % 14], h, a, hg, ag, att))
            gid += 1
    return {"club": clubs, "player": players, "game": games}


FOOTBALL_QUESTIONS = [
    Q("How many clubs are in the league?", "SELECT count(*) FROM club"),
    Q("Which club has the largest stadium capacity? Give the club name and stadium.",
      "SELECT name, stadium FROM club ORDER BY capacity DESC LIMIT 1"),
    Q("List the names of clubs founded before 1940.", "SELECT name FROM club WHERE founded_year < 1940"),
    Q("How many players play in each position?", "SELECT position, count(*) FROM player GROUP BY position"),
    Q("Who is the player with the most goals?", "SELECT name FROM player ORDER BY goals DESC LIMIT 1"),
    Q("List the names of players of {c}.",
      "SELECT T1.name FROM player AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id WHERE T2.name = '{c}'",
      {"c": ("SELECT name FROM club ORDER BY club_id", [0, 5])}),
    Q("How many goals have the players of each club scored? Give the club name and the total.",
      "SELECT T2.name, sum(T1.goals) FROM player AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id "
      "GROUP BY T1.club_id"),
    Q("Which club's players scored the most goals in total?",
      "SELECT T2.name FROM player AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id GROUP BY T1.club_id "
      "ORDER BY sum(T1.goals) DESC, T2.name LIMIT 1"),
    Q("Which players from {n} play as forwards?",
      "SELECT name FROM player WHERE nationality = '{n}' AND position = 'Forward'",
      {"n": ("SELECT nationality FROM player WHERE position = 'Forward' GROUP BY nationality "
             "ORDER BY count(*) DESC, nationality", [0])}),
    Q("How many games were played in the {s} season?", "SELECT count(*) FROM game WHERE season = '{s}'",
      {"s": ("SELECT DISTINCT season FROM game ORDER BY season", [1])}),
    Q("What is the average attendance of games?", "SELECT avg(attendance) FROM game"),
    Q("How many home games did {c} win?",
      "SELECT count(*) FROM game AS T1 JOIN club AS T2 ON T1.home_club_id = T2.club_id "
      "WHERE T2.name = '{c}' AND T1.home_goals > T1.away_goals",
      {"c": ("SELECT name FROM club ORDER BY club_id", [2])}),
    Q("Which game had the most goals in total? Give the game id and season.",
      "SELECT game_id, season FROM game ORDER BY home_goals + away_goals DESC, game_id LIMIT 1"),
    Q("List the names of the home and away clubs of games that ended 0-0.",
      "SELECT T2.name, T3.name FROM game AS T1 JOIN club AS T2 ON T1.home_club_id = T2.club_id "
      "JOIN club AS T3 ON T1.away_club_id = T3.club_id WHERE T1.home_goals = 0 AND T1.away_goals = 0"),
    Q("Which players are older than every player of {c}?",
      "SELECT name FROM player WHERE birth_year < (SELECT min(T1.birth_year) FROM player AS T1 JOIN club AS T2 "
      "ON T1.club_id = T2.club_id WHERE T2.name = '{c}')",
      {"c": ("SELECT T2.name FROM player AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id GROUP BY T1.club_id "
             "ORDER BY min(T1.birth_year) DESC, T2.name", [0])}),
    Q("Which clubs have more than 3 players from Portugal?",
      "SELECT T2.name FROM player AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id "
      "WHERE T1.nationality = 'Portugal' GROUP BY T1.club_id HAVING count(*) > 3"),
    Q("Which nationalities have both goalkeepers and forwards in the league?",
      "SELECT nationality FROM player WHERE position = 'Goalkeeper' INTERSECT "
      "SELECT nationality FROM player WHERE position = 'Forward'"),
    Q("What is the average number of goals scored by players in each position?",
      "SELECT position, avg(goals) FROM player GROUP BY position"),
    Q("Which clubs never won an away game?",
      "SELECT name FROM club EXCEPT SELECT T2.name FROM game AS T1 JOIN club AS T2 "
      "ON T1.away_club_id = T2.club_id WHERE T1.away_goals > T1.home_goals"),
    Q("Which midfielders scored more goals than the average midfielder?",
      "SELECT name FROM player WHERE position = 'Midfielder' AND goals > "
      "(SELECT avg(goals) FROM player WHERE position = 'Midfielder')"),
    Q("List each club with the number of home games it played, most first, ties in alphabetical order.",
      "SELECT T2.name, count(*) FROM game AS T1 JOIN club AS T2 ON T1.home_club_id = T2.club_id "
      "GROUP BY T1.home_club_id ORDER BY count(*) DESC, T2.name"),
]

# --- bike_sharing (dev) --------------------------------------------------------------------------------------

BIKE_DDL = """
CREATE TABLE station (
  station_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  district TEXT,
  capacity INTEGER,
  opened_year INTEGER
);
CREATE TABLE bike (
  bike_id INTEGER PRIMARY KEY,
  model TEXT,
  bike_type TEXT,
  purchase_year INTEGER,
  home_station_id INTEGER,
  FOREIGN KEY (home_station_id) REFERENCES station(station_id)
);
CREATE TABLE trip (
  trip_id INTEGER PRIMARY KEY,
  bike_id INTEGER NOT NULL,
  start_station_id INTEGER NOT NULL,
  end_station_id INTEGER NOT NULL,
  start_time TEXT,
  duration_minutes INTEGER,
  rider_type TEXT,
  FOREIGN KEY (bike_id) REFERENCES bike(bike_id),
  FOREIGN KEY (start_station_id) REFERENCES station(station_id),
  FOREIGN KEY (end_station_id) REFERENCES station(station_id)
);
"""

STATIONS = [("Central Square", "Old Town"), ("River Walk", "Old Town"), ("Museum Gate", "Old Town"),
            ("University Park", "North"), ("Library Corner", "North"), ("Market Hall", "East"),
            ("Harbor Point", "East"), ("Train Station", "West"), ("Sports Arena", "West"),
            ("Botanic Garden", "South"), ("Hospital Road", "South"), ("Lakeside", "South")]


def fill_bike(rng: random.Random) -> dict[str, list[tuple]]:
    stations = [(i, n, d, rng.choice([12, 16, 20, 24, 30]), rng.randint(2012, 2022))
                for i, (n, d) in enumerate(STATIONS, start=1)]
    stations[0] = stations[0][:3] + (40,) + stations[0][4:]  # Central Square is the largest station
    bikes = []
    for i in range(1, 41):
        electric = rng.random() < 0.35
        model = rng.choice(["Volt E2", "Volt E3"]) if electric else rng.choice(["City 3", "City 7", "Urban Pro"])
        bikes.append((i, model, "electric" if electric else "classic", rng.randint(2015, 2023),
                      rng.randint(1, 11)))
    trips = []
    for i in range(1, 201):
        s = 1 if i % 6 == 0 else rng.randint(1, 11)  # Lakeside (12) is new: no trips yet
        e = rng.randint(1, 11)
        start = dt.datetime(2024, 5, 1, 6) + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 60))
        trips.append((i, rng.randint(1, 36), s, e, start.strftime("%Y-%m-%d %H:%M"), rng.randint(3, 75),
                      rng.choice(["member", "member", "casual"])))
    return {"station": stations, "bike": bikes, "trip": trips}


BIKE_QUESTIONS = [
    Q("How many stations are there?", "SELECT count(*) FROM station"),
    Q("List the names of stations in the {d} district.", "SELECT name FROM station WHERE district = '{d}'",
      {"d": ("SELECT DISTINCT district FROM station ORDER BY district", [2, 3])}),
    Q("Which station has the largest capacity?", "SELECT name FROM station ORDER BY capacity DESC LIMIT 1"),
    Q("How many bikes are electric?", "SELECT count(*) FROM bike WHERE bike_type = 'electric'"),
    Q("How many bikes of each model are there?", "SELECT model, count(*) FROM bike GROUP BY model"),
    Q("What is the average trip duration in minutes?", "SELECT avg(duration_minutes) FROM trip"),
    Q("What is the total capacity of stations in each district?",
      "SELECT district, sum(capacity) FROM station GROUP BY district"),
    Q("How many trips started at {s}?",
      "SELECT count(*) FROM trip AS T1 JOIN station AS T2 ON T1.start_station_id = T2.station_id "
      "WHERE T2.name = '{s}'",
      {"s": ("SELECT name FROM station ORDER BY station_id", [1, 6])}),
    Q("Which station is the most common starting point of trips?",
      "SELECT T2.name FROM trip AS T1 JOIN station AS T2 ON T1.start_station_id = T2.station_id "
      "GROUP BY T1.start_station_id ORDER BY count(*) DESC LIMIT 1"),
    Q("Which stations have never been the start of a trip?",
      "SELECT name FROM station WHERE station_id NOT IN (SELECT start_station_id FROM trip)"),
    Q("How many trips did casual riders take, and how many did members take?",
      "SELECT rider_type, count(*) FROM trip GROUP BY rider_type"),
    Q("List the trips longer than 60 minutes: trip id and duration, longest first.",
      "SELECT trip_id, duration_minutes FROM trip WHERE duration_minutes > 60 "
      "ORDER BY duration_minutes DESC, trip_id"),
    Q("What is the average trip duration for each bike type?",
      "SELECT T2.bike_type, avg(T1.duration_minutes) FROM trip AS T1 JOIN bike AS T2 ON T1.bike_id = T2.bike_id "
      "GROUP BY T2.bike_type"),
    Q("How many trips started and ended at the same station?",
      "SELECT count(*) FROM trip WHERE start_station_id = end_station_id"),
    Q("Which bikes have never been used for a trip? Give ids and models.",
      "SELECT bike_id, model FROM bike WHERE bike_id NOT IN (SELECT bike_id FROM trip)"),
    Q("Which districts have stations that are both a start of trips by casual riders and a home station of an "
      "electric bike?",
      "SELECT T2.district FROM trip AS T1 JOIN station AS T2 ON T1.start_station_id = T2.station_id "
      "WHERE T1.rider_type = 'casual' INTERSECT SELECT T2.district FROM bike AS T1 JOIN station AS T2 "
      "ON T1.home_station_id = T2.station_id WHERE T1.bike_type = 'electric'"),
    Q("Which stations opened after 2018 have a capacity of at least 20?",
      "SELECT name FROM station WHERE opened_year > 2018 AND capacity >= 20"),
    Q("Which bikes were used for more than 7 trips? Give the bike ids.",
      "SELECT bike_id FROM trip GROUP BY bike_id HAVING count(*) > 7"),
    Q("Which stations saw trips ending there with an average duration above the overall average?",
      "SELECT T2.name FROM trip AS T1 JOIN station AS T2 ON T1.end_station_id = T2.station_id "
      "GROUP BY T1.end_station_id HAVING avg(T1.duration_minutes) > (SELECT avg(duration_minutes) FROM trip)"),
    Q("List the names of the start and end stations of trips shorter than 5 minutes.",
      "SELECT T2.name, T3.name FROM trip AS T1 JOIN station AS T2 ON T1.start_station_id = T2.station_id "
      "JOIN station AS T3 ON T1.end_station_id = T3.station_id WHERE T1.duration_minutes < 5"),
    Q("How many trips were taken on electric bikes in May 2024?",
      "SELECT count(*) FROM trip AS T1 JOIN bike AS T2 ON T1.bike_id = T2.bike_id "
      "WHERE T2.bike_type = 'electric' AND T1.start_time LIKE '2024-05%'"),
    Q("What are the earliest and latest trip start times?", "SELECT min(start_time), max(start_time) FROM trip"),
]

SPECS = [
    DbSpec("city_library", "train", LIBRARY_DDL, fill_library, LIBRARY_QUESTIONS),
    DbSpec("health_clinic", "train", CLINIC_DDL, fill_clinic, CLINIC_QUESTIONS),
    DbSpec("regional_airline", "train", AIRLINE_DDL, fill_airline, AIRLINE_QUESTIONS),
    DbSpec("online_shop", "train", SHOP_DDL, fill_shop, SHOP_QUESTIONS),
    DbSpec("music_festival", "dev", FESTIVAL_DDL, fill_festival, FESTIVAL_QUESTIONS),
    DbSpec("football_league", "dev", FOOTBALL_DDL, fill_football, FOOTBALL_QUESTIONS),
    DbSpec("bike_sharing", "dev", BIKE_DDL, fill_bike, BIKE_QUESTIONS),
]
"""Every database of the bundled dataset, train databases first."""

# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------

_SPIDER_TYPE = {"INTEGER": "number", "REAL": "number", "NUMERIC": "number", "TEXT": "text", "DATE": "time",
                "BOOLEAN": "boolean"}


def build_database(spec: DbSpec, path: Path) -> None:
    """Create ``path`` from ``spec``'s DDL and rows, with foreign keys enforced while inserting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    rows = spec.fill(random.Random(f"{SEED}:{spec.db_id}"))
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(spec.ddl)
        for table, table_rows in rows.items():
            if table_rows:
                marks = ", ".join("?" * len(table_rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
        conn.commit()
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise ValueError(f"{spec.db_id}: rows break foreign keys: {bad[:5]}")
        conn.execute("VACUUM")
    finally:
        conn.close()


def tables_entry(db_id: str, path: Path) -> dict[str, Any]:
    """The ``tables.json`` entry of a built database, read from its schema."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        columns: list[list[Any]] = [[-1, "*"]]
        types = ["text"]
        pks: list[Any] = []
        index: dict[tuple[str, str], int] = {}
        for t, table in enumerate(tables):
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            key = []
            for _, name, ctype, _, _, pk in info:
                index[(table.lower(), name.lower())] = len(columns)
                if pk:
                    key.append((pk, len(columns)))
                columns.append([t, name])
                types.append(_SPIDER_TYPE.get(ctype.upper(), "text"))
            key.sort()
            if len(key) == 1:
                pks.append(key[0][1])
            elif key:
                pks.append([c for _, c in key])
        fks = []
        for table in tables:
            for row in conn.execute(f"PRAGMA foreign_key_list({table})").fetchall():
                ref_table, src, dst = row[2], row[3], row[4]
                fks.append([index[(table.lower(), src.lower())], index[(ref_table.lower(), dst.lower())]])
    finally:
        conn.close()
    return {
        "column_names": [[t, n.replace("_", " ").lower()] if t >= 0 else [t, n] for t, n in columns],
        "column_names_original": columns,
        "column_types": types,
        "db_id": db_id,
        "foreign_keys": fks,
        "primary_keys": pks,
        "table_names": [t.replace("_", " ").lower() for t in tables],
        "table_names_original": tables,
    }


def _sql_literal(value: Any) -> str:
    return str(value).replace("'", "''")


def instantiate(spec: DbSpec, path: Path) -> list[dict[str, Any]]:
    """The Spider entries for ``spec``'s questions, constants picked from the database at ``path``."""
    conn = sqlite3.connect(path)
    entries = []
    try:
        for q in spec.questions:
            if not q.picks:
                variants = [({}, {})]
            else:
                n = {len(offsets) for _, offsets in q.picks.values()}
                if len(n) != 1:
                    raise ValueError(f"{spec.db_id}: picks of {q.question!r} disagree on the number of variants")
                variants = []
                for k in range(n.pop()):
                    raw, lit = {}, {}
                    for name, (picker, offsets) in q.picks.items():
                        rows = conn.execute(picker).fetchall()
                        if offsets[k] >= len(rows):
                            raise ValueError(f"{spec.db_id}: picker for {name!r} has only {len(rows)} rows")
                        raw[name] = rows[offsets[k]][0]
                        lit[name] = _sql_literal(rows[offsets[k]][0])
                    variants.append((raw, lit))
            for raw, lit in variants:
                question = q.question.format(**raw)
                query = q.query.format(**lit)
                entries.append({
                    "db_id": spec.db_id,
                    "query": query,
                    "query_toks": sql_tokens(query),
                    "query_toks_no_value": sql_tokens_no_value(query),
                    "question": question,
                    "question_toks": question.replace("?", " ?").replace(",", " ,").replace(".", " .").split(),
                })
    finally:
        conn.close()
    return entries


def check_gold(path: Path, query: str) -> str | None:
    """Why ``query`` is not a usable gold query on ``path`` (None when it is)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            rows = conn.execute(query).fetchall()
        except sqlite3.Error as e:
            return f"fails: {e}"
        if not rows:
            return "returns no rows"
        if all(v is None for row in rows for v in row):
            return "returns only NULL"
        conn.execute("PRAGMA reverse_unordered_selects = ON")
        reversed_rows = conn.execute(query).fetchall()
        ordered = "order by" in query.lower()
        if ordered and rows != reversed_rows:
            return "its row order depends on the scan order (ties in ORDER BY)"
        if not ordered and sorted(map(repr, rows)) != sorted(map(repr, reversed_rows)):
            return "its rows depend on the scan order"
        return None
    finally:
        conn.close()


def build(out_dir: str | Path) -> dict[str, Any]:
    """Write the whole dataset under ``out_dir``; returns statistics. Raises ValueError on a bad gold query."""
    out = Path(out_dir)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}
    tables = []
    problems = []
    for spec in SPECS:
        path = out / "database" / spec.db_id / f"{spec.db_id}.sqlite"
        build_database(spec, path)
        tables.append(tables_entry(spec.db_id, path))
        entries = instantiate(spec, path)
        for e in entries:
            why = check_gold(path, e["query"])
            if why:
                problems.append(f"{spec.db_id}: {e['question']!r}: {why}\n  {e['query']}")
        splits[spec.split].extend(entries)
    if problems:
        raise ValueError("bad gold queries:\n" + "\n".join(problems))
    for name, data in (("train_spider.json", splits["train"]), ("train_others.json", []),
                       ("dev.json", splits["dev"]), ("tables.json", tables)):
        with open(out / name, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    stats: dict[str, Any] = {}
    for split, entries in splits.items():
        levels: dict[str, int] = {}
        for e in entries:
            level = classify_hardness(e["query"])
            levels[level] = levels.get(level, 0) + 1
        stats[split] = {"questions": len(entries), "databases": sorted({e["db_id"] for e in entries}),
                        "difficulty": levels}
    return stats


def main(argv: list[str] | None = None) -> int:
    """Rebuild the bundled dataset (or build it elsewhere with --out)."""
    from agentgym.envs.spider_sql.data import BUNDLED_DATA_DIR

    parser = argparse.ArgumentParser(prog="python -m agentgym.envs.spider_sql.make_data", description=main.__doc__)
    parser.add_argument("--out", default=str(BUNDLED_DATA_DIR), help="output directory (default: the bundled data)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:  # build aside, then swap in, so a failure leaves the old data
        stats = build(tmp)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
